"""Judging predictions: pure functions of arrays, no I/O, deterministic (a fixed-seed numpy Generator).

Every judgement reduces to one rule: a statistic's bootstrap confidence interval [lo, hi] is held
against the interval the prediction allows [a, b]:

    confirmed     a <= lo and hi <= b      the whole interval lies inside the prediction
    refuted       hi < a or lo > b         the whole interval lies outside it
    inconclusive  otherwise                it straddles an edge (or the statistic is undefined)

The statistics, per kind of prediction:

  per_step        pairs (predicted_t, observed_t) pooled over seeds; Pearson r, the slope of the
                  least-squares fit observed ~ slope * predicted + b (1 = the predicted change
                  fully materializes), sign agreement P(sign p = sign o), median |p - o| / |o|.
                  Bootstrap: resample the pairs (one-step changes are close to independent).
  ab / counterfactual
                  treatment vs baseline of a per-seed statistic (final value, mean or sum over a
                  window), combined as mean_T - mean_B or mean_T / mean_B over seeds (a ratio of
                  means, stabler than a mean of ratios). Paired bootstrap: seeds are resampled with
                  replacement, the same draw for both arms (seed s of both arms shares the cold
                  start and every step's prompts); with resample = "seeds_and_steps" the steps of
                  each drawn seed are resampled as well, again the same draw for both arms (step t
                  of both arms sees the same prompts). Seeds alone, with 2-3 seeds, give a crude
                  interval (3 distinct resamples for 2 seeds); adding steps uses the within-run
                  spread, at the price of treating steps as exchangeable inside the window.
                  A counterfactual pair (same weights, same batch) is judged the same way.
  trajectory      ratio of the predicted drift per step (mean of the predictor's one-step
                  deltas) to the observed drift per step (least-squares slope of the observed
                  trajectory), pooled over seeds; hierarchical bootstrap (seeds, then steps).

Left out on purpose: BCa or studentized intervals (percentile intervals are enough to tell "inside"
from "outside", and they stay exact in the degenerate cases the tests pin down), and multiple-
testing corrections across predictions (each prediction is a separate claim of the hypothesis).
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

VERDICTS = ("confirmed", "refuted", "inconclusive")
N_BOOT = 2000
CONFIDENCE = 0.90
RNG_SEED = 20250101
INF = math.inf


@dataclass(frozen=True)
class Estimate:
    """A statistic's value on the data and its bootstrap percentile interval."""

    value: float
    lo: float
    hi: float

    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.lo, self.hi))


@dataclass(frozen=True)
class Criterion:
    """One statistic judged against one predicted interval."""

    name: str
    estimate: Estimate
    allowed: tuple[float, float]
    verdict: str

    def to_dict(self) -> dict:
        return {"name": self.name, "value": _num(self.estimate.value),
                "interval": [_num(self.estimate.lo), _num(self.estimate.hi)],
                "allowed": [_num(self.allowed[0]), _num(self.allowed[1])], "verdict": self.verdict}


@dataclass
class Judgement:
    verdict: str
    criteria: list[Criterion]
    n: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _num(x: float) -> Optional[float]:
    """JSON-safe number: inf / nan become None (report.json stays strict JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None


def interval_verdict(lo: float, hi: float, a: float, b: float) -> str:
    """Verdict of an observed interval [lo, hi] against an allowed interval [a, b] (a, b may be +-inf)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        return "inconclusive"
    if a <= lo and hi <= b:
        return "confirmed"
    if hi < a or lo > b:
        return "refuted"
    return "inconclusive"


def combine(verdicts: list[str]) -> str:
    """All confirmed -> confirmed; any refuted -> refuted; else inconclusive (empty -> inconclusive)."""
    if verdicts and all(v == "confirmed" for v in verdicts):
        return "confirmed"
    if any(v == "refuted" for v in verdicts):
        return "refuted"
    return "inconclusive"


def _percentile(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if s.size < 0.9 * samples.size or s.size == 0:  # undefined on many resamples: no interval
        return (math.nan, math.nan)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(s, alpha)), float(np.quantile(s, 1.0 - alpha))


@contextmanager
def _quiet():
    """An all-NaN resample is expected (a missing metric, a constant window): it becomes NaN, not a warning."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def rng(seed: int = RNG_SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# per-step: predicted vs observed one-step changes


def _pairs_stats(p: np.ndarray, o: np.ndarray) -> dict[str, np.ndarray]:
    """Row-wise statistics of pair samples p, o: [B, N] -> each [B] (vectorized over bootstrap rows)."""
    with _quiet():
        pm, om = p.mean(-1, keepdims=True), o.mean(-1, keepdims=True)
        dp, do = p - pm, o - om
        sxy, sxx, syy = (dp * do).sum(-1), (dp * dp).sum(-1), (do * do).sum(-1)
        r = sxy / np.sqrt(sxx * syy)
        slope = sxy / sxx
        sign = (np.sign(p) * np.sign(o) > 0).mean(-1)
        rel = np.median(np.abs(p - o) / np.abs(o), axis=-1)
    tiny = 1e-12 * np.maximum(np.abs(pm[..., 0]), 1.0)
    r = np.where(sxx > tiny ** 2, r, np.nan)   # constant prediction: r and slope undefined
    slope = np.where(sxx > tiny ** 2, slope, np.nan)
    return {"r": r, "slope": slope, "sign_agreement": sign, "median_rel_error": rel}


def judge_per_step(pred: np.ndarray, obs: np.ndarray, *, min_r: Optional[float] = None,
                   slope: Optional[tuple[float, float]] = None, min_sign_agreement: Optional[float] = None,
                   max_median_rel_error: Optional[float] = None, n_boot: int = N_BOOT,
                   confidence: float = CONFIDENCE, seed: int = RNG_SEED) -> Judgement:
    """Judge per-step predictions: pred, obs are 1-d arrays of paired one-step values (NaN pairs dropped)."""
    pred, obs = np.asarray(pred, float).ravel(), np.asarray(obs, float).ravel()
    ok = np.isfinite(pred) & np.isfinite(obs)
    p, o = pred[ok], obs[ok]
    notes = []
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} step(s) without both values were left out")
    wanted = [(k, a) for k, a in (
        ("r", None if min_r is None else (min_r, 1.0)),
        ("slope", slope),
        ("sign_agreement", None if min_sign_agreement is None else (min_sign_agreement, 1.0)),
        ("median_rel_error", None if max_median_rel_error is None else (0.0, max_median_rel_error)),
    ) if a is not None]
    if p.size < 3:
        notes.append(f"only {p.size} paired step(s): nothing to judge")
        crit = [Criterion(k, Estimate(math.nan, math.nan, math.nan), a, "inconclusive") for k, a in wanted]
        return Judgement("inconclusive", crit, {"pairs": int(p.size)}, notes)
    point = _pairs_stats(p[None], o[None])
    idx = rng(seed).integers(0, p.size, size=(n_boot, p.size))
    boot = _pairs_stats(p[idx], o[idx])
    crit = []
    for k, allowed in wanted:
        lo, hi = _percentile(boot[k], confidence)
        est = Estimate(float(point[k][0]), lo, hi)
        crit.append(Criterion(k, est, allowed, interval_verdict(lo, hi, *allowed)))
        if not math.isfinite(est.value):
            notes.append(f"{k} is undefined on these data (constant prediction or observation)")
    return Judgement(combine([c.verdict for c in crit]), crit, {"pairs": int(p.size)}, notes)


# ----------------------------------------------------------------------------------------------
# A/B: treatment vs baseline over seeds (paired), and counterfactual one-step pairs


def _per_seed(x: np.ndarray, stat: str) -> np.ndarray:
    """[..., S, T] -> [..., S]: final (last finite value), mean or auc (sum) over the steps."""
    with _quiet():
        if stat == "mean":
            return np.nanmean(x, -1)
        if stat == "auc":
            n = np.isfinite(x).sum(-1)
            return np.where(n > 0, np.nansum(x, -1) * x.shape[-1] / np.maximum(n, 1), np.nan)
        if stat == "final":
            fin = np.isfinite(x)
            last = x.shape[-1] - 1 - np.argmax(fin[..., ::-1], axis=-1)
            v = np.take_along_axis(x, last[..., None], -1)[..., 0]
            return np.where(fin.any(-1), v, np.nan)
    raise ValueError(f"unknown stat {stat!r}")


def _contrast(b: np.ndarray, t: np.ndarray, compare: str) -> np.ndarray:
    """[..., S] per-seed statistics -> [...] treatment-vs-baseline contrast over seeds."""
    with _quiet():
        mb, mt = np.nanmean(b, -1), np.nanmean(t, -1)
        return mt / mb if compare == "ratio" else mt - mb


def allowed_interval(compare: str, direction: Optional[str] = None, value: Optional[float] = None,
                     tolerance: float = 0.0) -> tuple[float, float]:
    """The interval a prediction allows for the contrast (direction is judged on the difference)."""
    if compare == "direction":
        return (0.0, INF) if direction == "increase" else (-INF, 0.0)
    return (value - tolerance, value + tolerance)


def judge_ab(base: np.ndarray, treat: np.ndarray, *, compare: str, allowed: tuple[float, float],
             stat: str = "mean", resample: str = "seeds_and_steps", n_boot: int = N_BOOT,
             confidence: float = CONFIDENCE, seed: int = RNG_SEED) -> Judgement:
    """Paired bootstrap of the treatment-vs-baseline contrast.

    base, treat: [S, T] metric values per (paired seed, step in the window); NaN where absent.
    compare: 'ratio' (mean_T / mean_B) or 'difference' / 'direction' (mean_T - mean_B).
    """
    b, t = np.atleast_2d(np.asarray(base, float)), np.atleast_2d(np.asarray(treat, float))
    if b.shape != t.shape:
        raise ValueError(f"baseline {b.shape} and treatment {t.shape} must be paired [seeds, steps]")
    S, T = b.shape
    kind = "ratio" if compare == "ratio" else "difference"
    notes = []
    sb, st_ = _per_seed(b, stat), _per_seed(t, stat)
    value = float(_contrast(sb, st_, kind))
    g = rng(seed)
    si = g.integers(0, S, size=(n_boot, S))
    with_steps = resample == "seeds_and_steps" and stat != "final" and T > 1
    if with_steps:
        ti = g.integers(0, T, size=(n_boot, S, T))
        bb = np.take_along_axis(b[si], ti, -1)
        tt = np.take_along_axis(t[si], ti, -1)
    else:
        bb, tt = b[si], t[si]
    boot = _contrast(_per_seed(bb, stat), _per_seed(tt, stat), kind)
    lo, hi = _percentile(boot, confidence)
    if S < 5 and with_steps:
        notes.append(f"{S} seed(s): the interval resamples seeds and the steps within each seed "
                     "(steps treated as exchangeable in the window)")
    elif S < 5:
        notes.append(f"{S} seed(s), seeds resampled only: a bootstrap over so few seeds gives a crude interval")
    est = Estimate(value, lo, hi)
    crit = Criterion(kind, est, allowed, interval_verdict(lo, hi, *allowed))
    if not math.isfinite(value):
        notes.append("the contrast is undefined (a missing metric or a zero baseline)")
    extra = {"baseline_mean": _num(float(np.nanmean(sb))) if np.isfinite(sb).any() else None,
             "treatment_mean": _num(float(np.nanmean(st_))) if np.isfinite(st_).any() else None,
             "baseline_per_seed": [_num(x) for x in sb], "treatment_per_seed": [_num(x) for x in st_]}
    return Judgement(crit.verdict, [crit], {"seeds": S, "steps": T}, notes, extra)


# ----------------------------------------------------------------------------------------------
# trajectory: accumulated one-step predictions vs the observed drift


def _slopes(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least-squares slope of y on x along the last axis, NaN-aware. y, x: [..., T]."""
    ok = np.isfinite(y) & np.isfinite(x)
    n = ok.sum(-1)
    with _quiet():
        xm = np.where(ok, x, 0).sum(-1) / n
        ym = np.where(ok, y, 0).sum(-1) / n
        dx = np.where(ok, x - xm[..., None], 0)
        dy = np.where(ok, y - ym[..., None], 0)
        return (dx * dy).sum(-1) / (dx * dx).sum(-1)


def judge_trajectory(pred_delta: np.ndarray, observed: np.ndarray, *, allowed: tuple[float, float],
                     n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = RNG_SEED) -> Judgement:
    """Ratio of predicted drift per step to observed drift per step.

    pred_delta: [S, T] the predictor's one-step change at each step; observed: [S, T] the observed
    trajectory at the same steps. ratio = mean(pred_delta) / mean_s slope_t(observed).
    """
    p, o = np.atleast_2d(np.asarray(pred_delta, float)), np.atleast_2d(np.asarray(observed, float))
    S, T = o.shape
    steps = np.broadcast_to(np.arange(T, dtype=float), o.shape)
    with _quiet():
        pred_rate = np.nanmean(p)
        obs_rate = np.nanmean(_slopes(o, steps))
        value = float(pred_rate / obs_rate)
    g = rng(seed)
    si = g.integers(0, S, size=(n_boot, S))
    ti = g.integers(0, T, size=(n_boot, S, T))
    pb = np.take_along_axis(p[si], ti, -1)
    ob = np.take_along_axis(o[si], ti, -1)
    xb = np.take_along_axis(np.broadcast_to(steps, (n_boot, S, T)), ti, -1)
    with _quiet():
        boot = np.nanmean(pb.reshape(n_boot, -1), -1) / np.nanmean(_slopes(ob, xb), -1)
    lo, hi = _percentile(boot, confidence)
    notes = []
    if T < 5:
        notes.append(f"only {T} step(s) in the window: the observed slope is rough")
    crit = Criterion("ratio", Estimate(value, lo, hi), allowed, interval_verdict(lo, hi, *allowed))
    extra = {"predicted_per_step": _num(pred_rate), "observed_per_step": _num(obs_rate)}
    return Judgement(crit.verdict, [crit], {"seeds": S, "steps": T}, notes, extra)


def judgement_dict(j: Judgement) -> dict:
    return {"verdict": j.verdict, "criteria": [c.to_dict() for c in j.criteria], "n": dict(j.n),
            "notes": list(j.notes), **j.extra}


__all__ = ["VERDICTS", "Estimate", "Criterion", "Judgement", "interval_verdict", "combine",
           "judge_per_step", "judge_ab", "judge_trajectory", "allowed_interval", "judgement_dict"]

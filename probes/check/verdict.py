"""Judging predictions: pure functions of arrays, no I/O, deterministic (a fixed-seed numpy Generator).

Every judgement reduces to one rule: a statistic's confidence interval [lo, hi] (level CONFIDENCE)
is held against the interval the prediction allows [a, b]:

    confirmed     a <= lo and hi <= b      the whole interval lies inside the prediction
    refuted       hi < a or lo > b         the whole interval lies outside it
    inconclusive  otherwise                it straddles an edge (or the statistic is undefined)

The statistics, per kind of prediction (arrays are [S seeds, T steps in the window]):

  per_step        pairs (predicted_t, observed_t): Pearson r, the least-squares slope of observed ~
                  predicted (1 = the predicted change fully materializes), sign agreement
                  P(sign p = sign o), median |p - o| / |o|. With compare = "per_step" on an A/B or
                  counterfactual pair, observed_t = treatment_t - baseline_t.
  ab / counterfactual
                  per seed, the window's final value / mean / sum in each arm; then
                  mean_T - mean_B or mean_T / mean_B over seeds (a ratio of means). A predicted value
                  computed from the same runs (a predictor's output) is carried along per seed, so
                  the interval is that of (observed - predicted) and an exact identity has a zero-width
                  interval (`paired_predicted`).
  trajectory      predicted drift per step (mean of the one-step predictions) over the observed drift
                  per step (least-squares slope of the trajectory), a ratio of means over seeds.
  skill           1 - MSE(pred) / MSE(mean of pred) on the per-step values: how much better the
                  per-step predictions track the observations than the predictor's own average.

Interval methods (`METHODS`, the prediction's `resample` field):

  seed_t (default)  Student t over seeds: every statistic is a smooth function of per-seed
                  summaries, so its interval is value +- t_{S-1} * sd(influence_s) / sqrt(S), with
                  influence_s the seed's linearized contribution (delta method: for a ratio of means
                  N/D, (N_s - R D_s) / mean D; r goes through Fisher's z). Autocorrelation inside a
                  seed is absorbed by the per-seed summary, and the seed-to-seed spread (the RL seed,
                  and the cold start when seeds vary it) is what the interval measures; the t
                  quantile pays for estimating that spread from few seeds (Student 1908). Measured
                  coverage: bench/verdict_calibration.py and docs/probe-check.md.
                  With one seed it falls back to `blocks` and says so.
  seeds           percentile bootstrap over seeds (paired across arms)
  seeds_and_steps percentile bootstrap over seeds, then iid over steps within each drawn seed
  blocks          percentile bootstrap over seeds, then a moving-block bootstrap over steps within
                  each seed (Kuensch 1989; block length round(sqrt(T)))

Left out on purpose: BCa or studentized bootstrap intervals, and multiple-testing corrections across
predictions (each prediction is a separate claim of the hypothesis).

Size: ~560 lines, one job: the interval rule, its four methods, and each kind's statistic written
once for the point value, the per-seed influence (seed_t) and the bootstrap rows; splitting them
would separate each statistic from the machinery it shares.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.stats

VERDICTS = ("confirmed", "refuted", "inconclusive")
CONFIDENCE = 0.90
N_BOOT = 2000
RNG_SEED = 20250101
METHODS = ("seed_t", "seeds", "seeds_and_steps", "blocks")
DEFAULT_METHOD = "seed_t"
INF = math.inf


def level_text(confidence: float = CONFIDENCE) -> str:
    """'90%' for the report's column headers."""
    return f"{confidence * 100:g}%"


def method_info() -> dict:
    """The constants a report states under its table."""
    return {"confidence": CONFIDENCE, "bootstrap_resamples": N_BOOT, "rng_seed": RNG_SEED,
            "default_interval": DEFAULT_METHOD, "methods": list(METHODS)}


@dataclass(frozen=True)
class Estimate:
    """A statistic's value on the data and its confidence interval."""

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


@contextmanager
def _quiet():
    """An all-NaN resample is expected (a missing metric, a constant window): it becomes NaN, not a warning."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def rng(seed: int = RNG_SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# The interval machinery


def _percentile(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if s.size < 0.9 * samples.size or s.size == 0:  # undefined on many resamples: no interval
        return (math.nan, math.nan)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(s, alpha)), float(np.quantile(s, 1.0 - alpha))


def t_interval(value: float, influence: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """value +- t_{S-1, (1+c)/2} * sd(influence) / sqrt(S): the delta-method Student interval.

    influence: [S] each seed's linearized contribution to the statistic (for a mean, x_s - mean).
    Fewer than 2 finite seeds, or a non-finite value: (nan, nan).
    """
    u = np.asarray(influence, float)
    u = u[np.isfinite(u)]
    if u.size < 2 or not math.isfinite(value):
        return (math.nan, math.nan)
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2.0, u.size - 1)) * float(np.std(u, ddof=1)) / math.sqrt(u.size)
    return (value - half, value + half)


def block_length(T: int) -> int:
    """Moving-block length: round(sqrt(T)), at least 1 (T = 30 -> 5)."""
    return max(1, round(math.sqrt(T)))


def draw(g: np.random.Generator, n_boot: int, S: int, T: int, method: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Bootstrap indices: seeds [n_boot, S] and steps [n_boot, S, T] (None: every step, in order)."""
    si = g.integers(0, S, size=(n_boot, S))
    if method == "seeds" or T <= 1:
        return si, None
    if method == "seeds_and_steps":
        return si, g.integers(0, T, size=(n_boot, S, T))
    if method == "blocks":
        L = block_length(T)
        k = -(-T // L)
        starts = g.integers(0, T - L + 1, size=(n_boot, S, k))
        ti = (starts[..., None] + np.arange(L)).reshape(n_boot, S, k * L)[..., :T]
        return si, ti
    raise ValueError(f"unknown method {method!r}")


def take(x: np.ndarray, si: np.ndarray, ti: Optional[np.ndarray]) -> np.ndarray:
    """x: [S, T] -> [n_boot, S, T] by the drawn seeds and steps."""
    xs = x[si]
    return xs if ti is None else np.take_along_axis(xs, ti, -1)


def _method_for(method: str, S: int, notes: list[str]) -> str:
    if method == "seed_t" and S < 2:
        notes.append(f"{S} seed(s): no spread over seeds to measure; the interval is a moving-block "
                     "bootstrap over the steps (it covers the steps' noise, not the seeds')")
        return "blocks"
    if method != "seed_t" and S < 5:
        notes.append(f"{S} seed(s), resample = {method!r}: a bootstrap over so few seeds gives too "
                     "narrow an interval (docs/probe-check.md, calibration)")
    return method


def _ratio_influence(num: np.ndarray, den: np.ndarray) -> tuple[float, np.ndarray]:
    """R = mean(num) / mean(den) and each seed's influence (num_s - R den_s) / mean(den)."""
    with _quiet():
        mn, md = np.nanmean(num), np.nanmean(den)
        r = mn / md
        return float(r), (num - r * den) / md


# ----------------------------------------------------------------------------------------------
# per-step: predicted vs observed one-step changes


def _pairs_stats(p: np.ndarray, o: np.ndarray) -> dict[str, np.ndarray]:
    """Row-wise statistics of pair samples p, o: [..., N] -> each [...]; NaN pairs are ignored."""
    ok = np.isfinite(p) & np.isfinite(o)
    n = ok.sum(-1)
    with _quiet():
        p0, o0 = np.where(ok, p, 0.0), np.where(ok, o, 0.0)
        pm, om = p0.sum(-1, keepdims=True) / n[..., None], o0.sum(-1, keepdims=True) / n[..., None]
        dp, do = np.where(ok, p - pm, 0.0), np.where(ok, o - om, 0.0)
        sxy, sxx, syy = (dp * do).sum(-1), (dp * dp).sum(-1), (do * do).sum(-1)
        r = sxy / np.sqrt(sxx * syy)
        slope = sxy / sxx
        sign = np.where(ok, np.sign(p) * np.sign(o) > 0, False).sum(-1) / n
        rel = np.nanmedian(np.where(ok, np.abs(p - o) / np.abs(o), np.nan), axis=-1)
    tiny = 1e-12 * np.maximum(np.abs(pm[..., 0]), 1.0)
    r = np.where(sxx > tiny ** 2, r, np.nan)   # constant prediction: r and slope undefined
    slope = np.where(sxx > tiny ** 2, slope, np.nan)
    return {"r": r, "slope": slope, "sign_agreement": sign, "median_rel_error": rel}


def _per_step_seed_t(p: np.ndarray, o: np.ndarray, k: str, confidence: float) -> Estimate:
    """Per-seed statistic k, combined over seeds (r through Fisher's z); Student interval."""
    s = _pairs_stats(p, o)[k]
    if k == "r":
        with _quiet():
            z = np.arctanh(np.clip(s, -0.999999, 0.999999))
        zm = float(np.nanmean(z)) if np.isfinite(z).any() else math.nan
        lo, hi = t_interval(zm, z - zm, confidence)
        return Estimate(math.tanh(zm) if math.isfinite(zm) else math.nan,
                        math.tanh(lo) if math.isfinite(lo) else math.nan, math.tanh(hi) if math.isfinite(hi) else math.nan)
    m = float(np.nanmean(s)) if np.isfinite(s).any() else math.nan
    lo, hi = t_interval(m, s - m, confidence)
    # a fraction lies in [0, 1] and an error is >= 0: the t interval is cut to the statistic's range
    bounds = {"sign_agreement": (0.0, 1.0), "median_rel_error": (0.0, INF)}.get(k, (-INF, INF))
    if math.isfinite(lo):
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Estimate(m, lo, hi)


def judge_per_step(pred: np.ndarray, obs: np.ndarray, *, min_r: Optional[float] = None,
                   slope: Optional[tuple[float, float]] = None, min_sign_agreement: Optional[float] = None,
                   max_median_rel_error: Optional[float] = None, method: str = DEFAULT_METHOD,
                   n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = RNG_SEED) -> Judgement:
    """Judge per-step predictions. pred, obs: [S, T] paired one-step values (1-d: one seed); NaN pairs dropped.

    seed_t: each criterion is computed per seed and combined over seeds (the mean; r via Fisher's z);
    the bootstrap methods compute it on the pooled pairs of each resample.
    """
    p, o = np.atleast_2d(np.asarray(pred, float)), np.atleast_2d(np.asarray(obs, float))
    ok = np.isfinite(p) & np.isfinite(o)
    notes = []
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} step(s) without both values were left out")
    p, o = np.where(ok, p, np.nan), np.where(ok, o, np.nan)
    keep = ok.sum(1) >= 3 if p.shape[0] > 1 else ok.any(1)
    p, o = p[keep], o[keep]
    wanted = [(k, a) for k, a in (
        ("r", None if min_r is None else (min_r, 1.0)),
        ("slope", slope),
        ("sign_agreement", None if min_sign_agreement is None else (min_sign_agreement, 1.0)),
        ("median_rel_error", None if max_median_rel_error is None else (0.0, max_median_rel_error)),
    ) if a is not None]
    n_pairs = int(np.isfinite(p).sum())
    if n_pairs < 3:
        notes.append(f"only {n_pairs} paired step(s): nothing to judge")
        crit = [Criterion(k, Estimate(math.nan, math.nan, math.nan), a, "inconclusive") for k, a in wanted]
        return Judgement("inconclusive", crit, {"pairs": n_pairs}, notes)
    S, T = p.shape
    m = _method_for(method, S, notes)
    crit = []
    if m == "seed_t":
        ests = {k: _per_step_seed_t(p, o, k, confidence) for k, _ in wanted}
    else:
        point = _pairs_stats(p.reshape(1, -1), o.reshape(1, -1))
        if m == "seeds_and_steps":  # the pooled pairs, resampled as pairs
            fp, fo = p.ravel(), o.ravel()
            idx = rng(seed).integers(0, fp.size, size=(n_boot, fp.size))
            boot = _pairs_stats(fp[idx], fo[idx])
        else:
            si, ti = draw(rng(seed), n_boot, S, T, m)
            boot = _pairs_stats(take(p, si, ti).reshape(n_boot, -1), take(o, si, ti).reshape(n_boot, -1))
        ests = {k: Estimate(float(point[k][0]), *_percentile(boot[k], confidence)) for k, _ in wanted}
    for k, allowed in wanted:
        est = ests[k]
        crit.append(Criterion(k, est, allowed, interval_verdict(est.lo, est.hi, *allowed)))
        if not math.isfinite(est.value):
            notes.append(f"{k} is undefined on these data (constant prediction or observation)")
    return Judgement(combine([c.verdict for c in crit]), crit, {"pairs": n_pairs, "seeds": S}, notes,
                     {"interval_method": m})


# ----------------------------------------------------------------------------------------------
# skill: per-step tracking beyond the predictor's own average


def skill(pred: np.ndarray, obs: np.ndarray, *, method: str = DEFAULT_METHOD, n_boot: int = N_BOOT,
          confidence: float = CONFIDENCE, seed: int = RNG_SEED) -> tuple[Estimate, list[str]]:
    """1 - MSE(pred) / MSE(mean of pred) on per-step pairs; pred, obs [S, T] (1-d: one seed).

    MSE(pred) = mean (o_t - p_t)^2; MSE(mean of pred) = mean (o_t - pbar)^2 with pbar the predictor's
    mean over every (seed, step). Skill > 0: the per-step values track the observations better than
    their average does; skill <= 0: the predictor says nothing beyond its average.
    Interval: seed_t on the ratio of per-seed mean squared errors, else a bootstrap.
    """
    p, o = np.atleast_2d(np.asarray(pred, float)), np.atleast_2d(np.asarray(obs, float))
    ok = np.isfinite(p) & np.isfinite(o)
    p, o = np.where(ok, p, np.nan), np.where(ok, o, np.nan)
    notes: list[str] = []
    if ok.sum() < 3:
        return Estimate(math.nan, math.nan, math.nan), ["fewer than 3 paired steps: no skill"]
    keep = ok.any(1)
    p, o = p[keep], o[keep]
    S, T = p.shape

    def stat(pp, oo):
        with _quiet():
            pbar = np.nanmean(pp.reshape(*pp.shape[:-2], -1), -1)[..., None, None]
            a = np.nanmean((oo - pp) ** 2, -1)
            b = np.nanmean((oo - pbar) ** 2, -1)
            return a, b

    a, b = stat(p, o)
    q, infl = _ratio_influence(a, b)
    value = 1.0 - q
    m = _method_for(method, S, notes)
    if m == "seed_t":
        lo, hi = t_interval(value, -infl, confidence)
        hi = min(hi, 1.0) if math.isfinite(hi) else hi   # skill <= 1 (MSE >= 0)
    else:
        si, ti = draw(rng(seed), n_boot, S, T, m)
        ab, bb = stat(take(p, si, ti), take(o, si, ti))
        with _quiet():
            lo, hi = _percentile(1.0 - np.nanmean(ab, -1) / np.nanmean(bb, -1), confidence)
    return Estimate(value, lo, hi), notes


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
             stat: str = "mean", resample: str = DEFAULT_METHOD, predicted: Optional[np.ndarray] = None,
             tolerance: float = 0.0, n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
             seed: int = RNG_SEED) -> Judgement:
    """The treatment-vs-baseline contrast, paired by seed (and by step for the bootstrap methods).

    base, treat: [S, T] metric values per (paired seed, step in the window); NaN where absent.
    compare: 'ratio' (mean_T / mean_B) or 'difference' / 'direction' (mean_T - mean_B).
    predicted: [S, T] a predicted value computed from the same runs (a predictor's output per
    step), or None. Given, the predicted value P is the mean of its per-seed means over the cells
    where both arms have a value, the statistic judged is (contrast - P), resampled with the
    observation (same seeds and steps), and it is reported shifted back by P: the criterion's
    interval is P + interval(contrast - P), judged against P +- tolerance (`allowed` is ignored).
    """
    b, t = np.atleast_2d(np.asarray(base, float)), np.atleast_2d(np.asarray(treat, float))
    if b.shape != t.shape:
        raise ValueError(f"baseline {b.shape} and treatment {t.shape} must be paired [seeds, steps]")
    S, T = b.shape
    kind = "ratio" if compare == "ratio" else "difference"
    notes: list[str] = []
    pv = None
    if predicted is not None:
        pv = np.atleast_2d(np.asarray(predicted, float))
        pv = np.where(np.isfinite(b) & np.isfinite(t), pv, np.nan)
    sb, st_ = _per_seed(b, stat), _per_seed(t, stat)
    value = float(_contrast(sb, st_, kind))
    pval, sp = None, None
    if pv is not None:
        with _quiet():
            sp = np.nanmean(pv, -1)
            pval = float(np.nanmean(sp))
        allowed = (pval - tolerance, pval + tolerance)
    m = _method_for(resample, S, notes)
    if m == "seeds_and_steps" and (stat == "final" or T <= 1):
        m = "seeds"
    if m == "seed_t":
        if kind == "ratio":
            _, infl = _ratio_influence(st_, sb)
        else:
            infl = (st_ - sb) - float(np.nanmean(st_ - sb))
        if sp is not None:
            infl = infl - (sp - pval)
        lo, hi = t_interval(value, infl, confidence)
    else:
        si, ti = draw(rng(seed), n_boot, S, T, m)
        boot = _contrast(_per_seed(take(b, si, ti), stat), _per_seed(take(t, si, ti), stat), kind)
        if pv is not None:
            with _quiet():
                boot = boot - np.nanmean(np.nanmean(take(pv, si, ti), -1), -1) + pval
        lo, hi = _percentile(boot, confidence)
    if pv is not None:
        notes.append("the predicted value comes from the same runs: it is resampled with the observation, "
                     "and the interval is that of (observed - predicted), shifted by the predicted value")
    est = Estimate(value, lo, hi)
    crit = Criterion(kind, est, allowed, interval_verdict(lo, hi, *allowed))
    if not math.isfinite(value):
        notes.append("the contrast is undefined (a missing metric or a zero baseline)")
    extra = {"baseline_mean": _num(float(np.nanmean(sb))) if np.isfinite(sb).any() else None,
             "treatment_mean": _num(float(np.nanmean(st_))) if np.isfinite(st_).any() else None,
             "baseline_per_seed": [_num(x) for x in sb], "treatment_per_seed": [_num(x) for x in st_],
             "interval_method": m}
    if pval is not None:
        extra["predictor_value"] = _num(pval)
        extra["predicted_per_seed"] = [_num(x) for x in sp]
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
                     method: str = DEFAULT_METHOD, n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
                     seed: int = RNG_SEED) -> Judgement:
    """Ratio of predicted drift per step to observed drift per step.

    pred_delta: [S, T] the predictor's one-step change at each step; observed: [S, T] the observed
    trajectory at the same steps. ratio = mean_s mean_t(pred_delta) / mean_s slope_t(observed).
    """
    p, o = np.atleast_2d(np.asarray(pred_delta, float)), np.atleast_2d(np.asarray(observed, float))
    S, T = o.shape
    steps = np.broadcast_to(np.arange(T, dtype=float), o.shape)
    with _quiet():
        a_s, b_s = np.nanmean(p, -1), _slopes(o, steps)
    value, infl = _ratio_influence(a_s, b_s)
    notes: list[str] = []
    m = _method_for(method, S, notes)
    if m == "seed_t":
        lo, hi = t_interval(value, infl, confidence)
    else:
        si, ti = draw(rng(seed), n_boot, S, T, m)
        xb = take(np.ascontiguousarray(steps), si, ti)
        with _quiet():
            boot = np.nanmean(np.nanmean(take(p, si, ti), -1), -1) / np.nanmean(_slopes(take(o, si, ti), xb), -1)
        lo, hi = _percentile(boot, confidence)
    if T < 5:
        notes.append(f"only {T} step(s) in the window: the observed slope is rough")
    crit = Criterion("ratio", Estimate(value, lo, hi), allowed, interval_verdict(lo, hi, *allowed))
    with _quiet():
        extra = {"predicted_per_step": _num(np.nanmean(a_s)), "observed_per_step": _num(np.nanmean(b_s)),
                 "interval_method": m}
    return Judgement(crit.verdict, [crit], {"seeds": S, "steps": T}, notes, extra)


# ----------------------------------------------------------------------------------------------
# severity: would a rival have been confirmed as well?


def no_effect(compare: str) -> Optional[float]:
    """The value of 'the treatment does nothing': ratio 1, difference 0."""
    return {"ratio": 1.0, "difference": 0.0}.get(compare)


def severity(verdict: str, est: Estimate, compare: str, tolerance: float,
             rivals: list[tuple[str, float]], skill_est: Optional[Estimate], constant: bool) -> tuple[bool, str]:
    """Is a confirmation severe: would the no-effect value and every named rival have failed?

    A confirmation is severe only if, on the same interval [lo, hi], the no-effect value +- tolerance
    and every rival value +- tolerance are refuted (a rival gets the allowance the claim got), and
    the claim has content a constant lacks: for a predictor, per-step skill whose interval lies
    above 0; for a data-free constant, at least one named rival refuted (the no-effect value alone is
    the weakest alternative). Mayo & Spanos 2006, severe testing.
    """
    if verdict != "confirmed":
        return False, f"not confirmed ({verdict})"
    lo, hi = est.lo, est.hi
    null = no_effect(compare)
    if null is not None and interval_verdict(lo, hi, null - tolerance, null + tolerance) != "refuted":
        return False, (f"the no-effect value ({compare} {null:g} ± {tolerance:g}) is not refuted on the same "
                       "interval: a claim of no effect would be confirmed as well")
    for label, v in rivals:
        if not math.isfinite(v):
            return False, f"rival {label!r} has no value on these runs"
        if interval_verdict(lo, hi, v - tolerance, v + tolerance) != "refuted":
            return False, f"rival {label!r} ({v:.4g} ± {tolerance:g}) is not refuted on the same interval"
    if not constant:
        if skill_est is None or not (math.isfinite(skill_est.lo) and skill_est.lo > 0):
            return False, ("the predictor's per-step skill interval does not lie above 0: it says nothing "
                           "beyond its average, and a constant at its mean would be confirmed as well")
    elif not rivals:
        return False, ("a data-free constant with no named rival: only the no-effect value was tested; "
                       "name the values a rival account predicts in `rivals`")
    what = ["the no-effect value"] + [f"rival {lab!r}" for lab, _ in rivals]
    return True, ", ".join(what) + " refuted on the same interval" + ("" if constant else "; per-step skill > 0")


def judgement_dict(j: Judgement) -> dict:
    return {"verdict": j.verdict, "criteria": [c.to_dict() for c in j.criteria], "n": dict(j.n),
            "notes": list(j.notes), **j.extra}


__all__ = ["VERDICTS", "CONFIDENCE", "N_BOOT", "RNG_SEED", "METHODS", "DEFAULT_METHOD", "Estimate",
           "Criterion", "Judgement", "interval_verdict", "combine", "t_interval", "judge_per_step",
           "judge_ab", "judge_trajectory", "skill", "severity", "no_effect", "allowed_interval",
           "judgement_dict", "level_text", "method_info"]

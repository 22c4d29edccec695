"""Calibration of probe-check's intervals on synthetic data whose truth is known.

Every prediction kind is simulated as probe-check sees it, [S seeds, T steps] per arm, with
AR(1) noise along the steps (x_t = rho x_{t-1} + sqrt(1 - rho^2) eps_t, stationary, unit variance
times sigma) and, optionally, a seed-level effect (tau: the treatment effect, slope or drift varies
from seed to seed, as it does when each seed has its own cold start). The truth is the
population value (the mean over seeds of that effect). For each setting and interval method the
real judging functions (probes/check/verdict.py) are called on `reps` replications, and the bench
prints

  coverage   the fraction of intervals that contain the truth (nominal 0.90)
  below      the fraction lying wholly below the truth: a prediction of the true value would be
             refuted on this side (nominal 0.05)
  above      the same, above

Kinds: ab_diff (A/B difference of means), ab_ratio (A/B ratio of means), cf_mean (counterfactual
difference: both updates on one batch, so most noise is shared), paired_pred (a counterfactual
difference against a predictor computed from the same runs; truth: observed - predicted = 0),
per_step (slope of observed ~ predicted one-step changes), trajectory (predicted drift / observed
slope).

    .venv/bin/python bench/verdict_calibration.py            # 400 replications per cell (~minutes)
    .venv/bin/python bench/verdict_calibration.py --quick    # 60 replications per cell
    .venv/bin/python bench/verdict_calibration.py --reps 1000 --methods seed_t --tau 0.5

The bootstrap methods use 500 resamples here (N_BOOT = 2000 in probe-check) to keep the bench
short; a percentile interval's coverage moves by well under the Monte Carlo error with that change.
Monte Carlo standard error of a coverage near 0.9: sqrt(0.09 / reps) (0.015 at 400 reps).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from solidrl.probes.check.verdict import METHODS, judge_ab, judge_per_step, judge_trajectory

KINDS = ("ab_diff", "ab_ratio", "cf_mean", "paired_pred", "per_step", "trajectory")
INF = math.inf


def ar1(g: np.random.Generator, shape: tuple[int, ...], rho: float) -> np.ndarray:
    """Stationary AR(1) along the last axis, unit marginal variance."""
    e = g.standard_normal(shape)
    x = np.empty(shape)
    x[..., 0] = e[..., 0]
    c = math.sqrt(1.0 - rho * rho)
    for t in range(1, shape[-1]):
        x[..., t] = rho * x[..., t - 1] + c * e[..., t]
    return x


def simulate(kind: str, g: np.random.Generator, S: int, T: int, rho: float, tau: float) -> dict:
    """One synthetic data set of a kind: the arrays the judge takes and the truth."""
    u = g.standard_normal((S, 1))          # seed offset shared by both arms (removed by pairing)
    d = tau * g.standard_normal((S, 1))    # seed-level heterogeneity of the effect
    if kind == "ab_diff":
        b = 1.0 + u + ar1(g, (S, T), rho)
        t = 1.0 + u + 0.5 + d + ar1(g, (S, T), rho)
        return {"b": b, "t": t, "compare": "difference", "truth": 0.5}
    if kind == "ab_ratio":
        m = 2.0 + 0.3 * u
        b = m + 0.2 * ar1(g, (S, T), rho)
        t = (1.5 + 0.3 * d) * m + 0.2 * ar1(g, (S, T), rho)
        return {"b": b, "t": t, "compare": "ratio", "truth": 1.5}
    if kind in ("cf_mean", "paired_pred"):
        shared = ar1(g, (S, T), rho)       # the batch's effect on both updates
        b = u + shared
        eff = 0.2 + d + 0.3 * ar1(g, (S, T), rho)
        t = b + eff
        out = {"b": b, "t": t, "compare": "difference", "truth": 0.2}
        if kind == "paired_pred":           # the predictor tracks the seed's effect, with its own error
            out["pred"] = 0.2 + d + 0.3 * ar1(g, (S, T), rho)
            out["truth"] = 0.0             # observed - predicted
        return out
    if kind == "per_step":
        p = ar1(g, (S, T), rho)
        o = (1.0 + 0.5 * d) * p + 0.5 * ar1(g, (S, T), rho)
        return {"p": p, "o": o, "truth": 1.0}
    if kind == "trajectory":
        steps = np.arange(T, dtype=float)
        slope = -0.01 * (1.0 + d)
        o = 1.0 + slope * steps + 0.01 * ar1(g, (S, T), rho)
        p = -0.01 + 0.005 * ar1(g, (S, T), rho)
        return {"p": p, "o": o, "truth": 1.0}
    raise ValueError(kind)


def interval(kind: str, data: dict, method: str, n_boot: int) -> tuple[float, float, float]:
    """(lo, hi, truth in the interval's units) from the real judging function."""
    if kind in ("ab_diff", "ab_ratio", "cf_mean"):
        j = judge_ab(data["b"], data["t"], compare=data["compare"], allowed=(-INF, INF), resample=method,
                     n_boot=n_boot)
        c = j.criteria[0].estimate
        return c.lo, c.hi, data["truth"]
    if kind == "paired_pred":
        j = judge_ab(data["b"], data["t"], compare="difference", allowed=(-INF, INF), resample=method,
                     predicted=data["pred"], tolerance=0.0, n_boot=n_boot)
        c = j.criteria[0].estimate
        return c.lo, c.hi, j.extra["predictor_value"] + data["truth"]   # observed - predicted = 0
    if kind == "per_step":
        j = judge_per_step(data["p"], data["o"], slope=(-INF, INF), method=method, n_boot=n_boot)
        c = j.criteria[0].estimate
        return c.lo, c.hi, data["truth"]
    j = judge_trajectory(data["p"], data["o"], allowed=(-INF, INF), method=method, n_boot=n_boot)
    c = j.criteria[0].estimate
    return c.lo, c.hi, data["truth"]


def calibrate(kind: str, method: str, rho: float, S: int, T: int = 30, tau: float = 0.0, reps: int = 400,
              seed: int = 0, n_boot: int = 500) -> dict[str, float]:
    """Coverage and one-sided miss rates of one method on one setting, over `reps` replications."""
    g = np.random.default_rng([seed, int(rho * 1000), S, T, int(tau * 1000), KINDS.index(kind)])
    cover = below = above = 0
    for _ in range(reps):
        lo, hi, truth = interval(kind, simulate(kind, g, S, T, rho, tau), method, n_boot)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            continue  # an undefined interval: counted as a miss on neither side, and not covered
        cover += lo <= truth <= hi
        below += hi < truth
        above += lo > truth
    return {"coverage": cover / reps, "below": below / reps, "above": above / reps}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="60 replications per cell")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--rhos", nargs="+", type=float, default=[0.0, 0.5, 0.8, 0.95])
    ap.add_argument("--seeds", nargs="+", type=int, default=[3, 5], help="numbers of seeds S")
    ap.add_argument("--tau", nargs="+", type=float, default=[0.0, 0.5], help="seed-level heterogeneity")
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args(argv)
    reps = 60 if a.quick else a.reps
    t0 = time.perf_counter()
    print(f"nominal coverage 0.90 (0.05 per side); {reps} replications per cell, T = {a.steps} steps; "
          f"MC s.e. of a coverage near 0.9: {math.sqrt(0.09 / reps):.3f}")
    print(f"{'kind':<12} {'S':>2} {'tau':>4} {'rho':>5}  " + "  ".join(f"{m:>22}" for m in a.methods))
    print(f"{'':<12} {'':>2} {'':>4} {'':>5}  " + "  ".join(f"{'cover  below  above':>22}" for _ in a.methods))
    for kind in a.kinds:
        for S in a.seeds:
            for tau in a.tau:
                for rho in a.rhos:
                    cells = [calibrate(kind, m, rho, S, a.steps, tau, reps) for m in a.methods]
                    print(f"{kind:<12} {S:>2} {tau:>4g} {rho:>5g}  " + "  ".join(
                        f"{c['coverage']:>8.3f} {c['below']:>6.3f} {c['above']:>6.3f}" for c in cells), flush=True)
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

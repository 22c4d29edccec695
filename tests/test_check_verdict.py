"""probes.verdict: the judging rules on synthetic records whose right answer is known.

A clearly true prediction must be confirmed, a clearly false one refuted, a noisy one left
inconclusive; point statistics are checked against scipy (an independent reference), and the
paired bootstrap against worked examples whose interval can be computed by hand.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from solidrl.probes.check.verdict import (_per_seed, allowed_interval, combine, interval_verdict, judge_ab,
                                    judge_per_step, judge_trajectory)

INF = math.inf


# -- the interval rule ------------------------------------------------------------------------


@pytest.mark.parametrize("lo,hi,a,b,want", [
    (0.55, 0.65, 0.5, 0.7, "confirmed"),      # inside
    (0.5, 0.7, 0.5, 0.7, "confirmed"),        # touching both edges is still inside
    (0.8, 0.9, 0.5, 0.7, "refuted"),          # above
    (0.1, 0.2, 0.5, 0.7, "refuted"),          # below
    (0.6, 0.8, 0.5, 0.7, "inconclusive"),     # straddles the upper edge
    (0.1, 0.2, 0.0, INF, "confirmed"),        # a direction: (0, inf)
    (-0.1, 0.2, 0.0, INF, "inconclusive"),
    (-0.3, -0.2, 0.0, INF, "refuted"),
    (math.nan, 0.2, 0.0, 1.0, "inconclusive"),  # undefined statistic: never confirmed or refuted
])
def test_interval_verdict(lo, hi, a, b, want):
    assert interval_verdict(lo, hi, a, b) == want


def test_combine_any_refuted_refutes_all_confirmed_confirms():
    assert combine(["confirmed", "confirmed"]) == "confirmed"
    assert combine(["confirmed", "inconclusive"]) == "inconclusive"
    assert combine(["inconclusive", "refuted"]) == "refuted"
    assert combine([]) == "inconclusive"


def test_allowed_interval():
    assert allowed_interval("direction", "increase") == (0.0, INF)
    assert allowed_interval("direction", "decrease") == (-INF, 0.0)
    assert allowed_interval("ratio", value=0.6, tolerance=0.1) == pytest.approx((0.5, 0.7))


# -- per-seed statistics ------------------------------------------------------------------------


def test_per_seed_stats_worked_example():
    x = np.array([[1.0, 2.0, 3.0, np.nan],    # seed 0: the last step is missing
                  [4.0, np.nan, 6.0, 8.0]])
    np.testing.assert_allclose(_per_seed(x, "mean"), [2.0, 6.0])      # (1+2+3)/3, (4+6+8)/3
    np.testing.assert_allclose(_per_seed(x, "final"), [3.0, 8.0])     # last finite value
    # auc = sum over the window, a missing step filled by the seed's mean: 6 * 4/3, 18 * 4/3
    np.testing.assert_allclose(_per_seed(x, "auc"), [8.0, 24.0])


# -- A/B ------------------------------------------------------------------------------------------


def _arms(ratio: float, noise: float, seeds: int, steps: int, seed: int = 0):
    g = np.random.default_rng(seed)
    base = 2.0 + 0.5 * g.standard_normal((seeds, 1)) + 0.1 * g.standard_normal((seeds, steps))
    treat = ratio * base * (1 + noise * g.standard_normal((seeds, steps)))
    return base, treat


def test_ab_clearly_true_ratio_is_confirmed():
    b, t = _arms(ratio=0.6, noise=0.02, seeds=4, steps=20)
    j = judge_ab(b, t, compare="ratio", allowed=(0.5, 0.7))
    assert j.verdict == "confirmed"
    c = j.criteria[0]
    assert 0.5 < c.estimate.lo <= c.estimate.value <= c.estimate.hi < 0.7


def test_ab_clearly_false_ratio_is_refuted():
    b, t = _arms(ratio=0.6, noise=0.02, seeds=4, steps=20)
    assert judge_ab(b, t, compare="ratio", allowed=(0.9, 1.1)).verdict == "refuted"
    assert judge_ab(b, t, compare="direction", allowed=allowed_interval("direction", "increase")).verdict == "refuted"
    assert judge_ab(b, t, compare="direction", allowed=allowed_interval("direction", "decrease")).verdict == "confirmed"


def test_ab_noisy_prediction_is_inconclusive():
    # A true ratio of 0.6 buried in 60% multiplicative noise over 2 seeds x 5 steps: the interval
    # is wide and contains 0.6, so a tight prediction around the truth can be neither confirmed nor refuted.
    b, t = _arms(ratio=0.6, noise=0.6, seeds=2, steps=5, seed=3)
    j = judge_ab(b, t, compare="ratio", allowed=(0.55, 0.65))
    assert j.verdict == "inconclusive"
    assert j.criteria[0].estimate.lo < 0.55 and j.criteria[0].estimate.hi > 0.65


def test_ab_pairing_removes_the_shared_seed_offset():
    # Two seeds, one step, stat final: baseline [1, 3], treatment [2, 4]. Every paired resample of
    # seeds gives mean_T - mean_B = 1 exactly, so the interval is [1, 1] although the arms overlap.
    b, t = np.array([[1.0], [3.0]]), np.array([[2.0], [4.0]])
    j = judge_ab(b, t, compare="difference", allowed=(0.9, 1.1), stat="final", resample="seeds")
    c = j.criteria[0]
    assert (c.estimate.value, c.estimate.lo, c.estimate.hi) == (1.0, 1.0, 1.0)
    assert j.verdict == "confirmed"
    assert any("too narrow" in n for n in j.notes)  # 2 seeds, a bootstrap: the report says so


def test_ab_two_seeds_seeds_only_interval_is_the_range_of_seed_contrasts():
    # Resampling 2 seeds gives 3 distinct means: (a, a), (a, b), (b, b); with 2000 draws the 5% and
    # 95% percentiles are the per-seed extremes. Seed contrasts (ratio of means per resample):
    # seed 0: 1/2, seed 1: 3/4 -> the interval is [0.5, 0.75].
    b, t = np.array([[2.0], [4.0]]), np.array([[1.0], [3.0]])
    c = judge_ab(b, t, compare="ratio", allowed=(0, 1), stat="final", resample="seeds").criteria[0]
    assert c.estimate.value == pytest.approx(4 / 6)
    assert (c.estimate.lo, c.estimate.hi) == (0.5, 0.75)


def test_ab_is_deterministic():
    b, t = _arms(ratio=0.8, noise=0.3, seeds=3, steps=10)
    j1 = judge_ab(b, t, compare="ratio", allowed=(0.7, 0.9))
    j2 = judge_ab(b, t, compare="ratio", allowed=(0.7, 0.9))
    assert j1.criteria[0].estimate == j2.criteria[0].estimate


def test_ab_zero_baseline_ratio_is_inconclusive_not_an_error():
    b, t = np.zeros((2, 3)), np.ones((2, 3))
    assert judge_ab(b, t, compare="ratio", allowed=(0.5, 2)).verdict == "inconclusive"


# -- per-step -------------------------------------------------------------------------------------


def test_per_step_point_statistics_match_scipy():
    g = np.random.default_rng(1)
    p = g.standard_normal(50)
    o = 0.8 * p + 0.3 * g.standard_normal(50)
    j = judge_per_step(p, o, min_r=0.0, slope=(0, 2), min_sign_agreement=0.0, max_median_rel_error=10)
    got = {c.name: c.estimate.value for c in j.criteria}
    assert got["r"] == pytest.approx(scipy.stats.pearsonr(p, o)[0], rel=1e-12)
    assert got["slope"] == pytest.approx(scipy.stats.linregress(p, o).slope, rel=1e-12)
    assert got["sign_agreement"] == pytest.approx(np.mean(np.sign(p) == np.sign(o)))
    assert got["median_rel_error"] == pytest.approx(np.median(np.abs(p - o) / np.abs(o)))


def test_per_step_clearly_true_is_confirmed():
    g = np.random.default_rng(2)
    p = g.standard_normal(80) * 1e-3
    o = p * (1 + 0.05 * g.standard_normal(80))
    j = judge_per_step(p, o, min_r=0.9, slope=(0.8, 1.2), min_sign_agreement=0.9, max_median_rel_error=0.2)
    assert j.verdict == "confirmed", [c.to_dict() for c in j.criteria]


def test_per_step_wrong_sign_is_refuted():
    g = np.random.default_rng(3)
    p = g.standard_normal(60)
    o = -p + 0.1 * g.standard_normal(60)
    j = judge_per_step(p, o, min_r=0.5, min_sign_agreement=0.6)
    assert j.verdict == "refuted"
    assert all(c.verdict == "refuted" for c in j.criteria)


def test_per_step_unrelated_noise_with_few_steps_is_inconclusive():
    g = np.random.default_rng(4)
    p, o = g.standard_normal(12), g.standard_normal(12)
    # min_r = 0: r's interval over 12 unrelated pairs straddles 0
    assert judge_per_step(p, o, min_r=0.0).verdict == "inconclusive"


def test_per_step_constant_prediction_is_inconclusive_with_a_note():
    o = np.linspace(-1, 1, 20)
    j = judge_per_step(np.zeros(20), o, min_r=0.5)
    assert j.verdict == "inconclusive"
    assert any("undefined" in n for n in j.notes)


def test_per_step_drops_missing_pairs_and_needs_three():
    p = np.array([1.0, np.nan, 2.0, 3.0])
    o = np.array([1.0, 5.0, np.nan, 3.0])
    j = judge_per_step(p, o, min_r=0.5)
    assert j.n["pairs"] == 2 and j.verdict == "inconclusive"


# -- trajectory -----------------------------------------------------------------------------------


def test_trajectory_accumulated_deltas_match_the_drift():
    g = np.random.default_rng(5)
    steps = np.arange(30)
    obs = 1.0 - 0.01 * steps + 0.002 * g.standard_normal((3, 30))   # drift -0.01 per step
    pred = -0.01 + 0.001 * g.standard_normal((3, 30))                  # one-step predictions
    j = judge_trajectory(pred, obs, allowed=(0.8, 1.25))
    assert j.verdict == "confirmed"
    assert j.criteria[0].estimate.value == pytest.approx(1.0, abs=0.05)
    assert judge_trajectory(-pred, obs, allowed=(0.8, 1.25)).verdict == "refuted"   # wrong sign


# -- the default interval: Student t over per-seed statistics ------------------------------------


def test_seed_t_difference_worked_example():
    # Per-seed contrasts T - B = 1, 2, 3 (one step each): mean 2, sd 1, t_{0.95, 2} = 2.919986,
    # half-width 2.919986 / sqrt(3) = 1.685854.
    b = np.zeros((3, 1))
    t = np.array([[1.0], [2.0], [3.0]])
    c = judge_ab(b, t, compare="difference", allowed=(0, 5), stat="final").criteria[0]
    assert c.estimate.value == pytest.approx(2.0)
    assert (c.estimate.lo, c.estimate.hi) == pytest.approx((2 - 1.685854, 2 + 1.685854), abs=1e-6)


def test_seed_t_ratio_is_exact_when_every_step_has_the_same_ratio():
    g = np.random.default_rng(7)
    b = 1.0 + g.random((3, 10))
    j = judge_ab(b, 0.875 * b, compare="ratio", allowed=(0.87, 0.88))
    c = j.criteria[0].estimate
    assert (c.value, c.lo, c.hi) == pytest.approx((0.875, 0.875, 0.875), abs=1e-12)
    assert j.verdict == "confirmed"


def test_seed_t_with_one_seed_falls_back_to_blocks_and_says_so():
    g = np.random.default_rng(8)
    b, t = g.standard_normal((1, 20)), 1 + g.standard_normal((1, 20))
    j = judge_ab(b, t, compare="difference", allowed=(0, 2))
    assert j.extra["interval_method"] == "blocks" and any("moving-block" in n for n in j.notes)
    assert math.isfinite(j.criteria[0].estimate.lo)


def _calibration():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "verdict_calibration.py"
    spec = importlib.util.spec_from_file_location("verdict_calibration", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("kind", ["ab_diff", "ab_ratio", "paired_pred", "per_step", "trajectory"])
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8])
def test_default_interval_covers_90_percent_with_3_autocorrelated_seeds(kind, rho):
    # 300 replications: Monte Carlo s.e. of a 0.90 coverage is sqrt(0.09/300) = 0.017, so [0.85, 0.95]
    # is +-2.9 s.e.; the seed-level heterogeneity tau = 0.5 is on (each seed its own cold start).
    cal = _calibration()
    c = cal.calibrate(kind, "seed_t", rho, S=3, T=30, tau=0.5, reps=300)
    assert 0.85 <= c["coverage"] <= 0.95, c


def test_resampling_three_seeds_alone_is_not_conservative():
    # The old documentation called resample = "seeds" the conservative choice; with 3 seeds a
    # bootstrap over seeds covers ~60% (bench/verdict_calibration.py), far below the nominal 90%.
    cal = _calibration()
    c = cal.calibrate("ab_diff", "seeds", 0.0, S=3, T=30, tau=0.0, reps=200)
    assert c["coverage"] < 0.75, c


def test_moving_blocks_are_contiguous_runs():
    from solidrl.probes.check.verdict import block_length, draw

    _, ti = draw(np.random.default_rng(0), 4, 2, 30, "blocks")
    L = block_length(30)
    assert L == 5 and ti.shape == (4, 2, 30)
    blocks = ti.reshape(4, 2, 6, 5)
    assert (np.diff(blocks, axis=-1) == 1).all() and ti.min() >= 0 and ti.max() < 30


# -- paired predicted values ---------------------------------------------------------------------


def test_paired_predicted_identity_is_confirmed_where_the_unpaired_rule_is_not():
    # The treatment-minus-baseline difference equals the predictor on every step (noisy from step to
    # step and seed to seed). Unpaired, the predicted mean is a fixed number and the observed interval
    # straddles its +-1e-9; paired, the interval of (observed - predicted) has zero width.
    g = np.random.default_rng(9)
    b = g.standard_normal((3, 15))
    pv = 0.5 + 0.1 * g.standard_normal((3, 15))
    t = b + pv
    paired = judge_ab(b, t, compare="difference", allowed=(0, 0), predicted=pv, tolerance=1e-9)
    assert paired.verdict == "confirmed"
    assert paired.extra["predictor_value"] == pytest.approx(pv.mean())
    p = float(pv.mean())
    unpaired = judge_ab(b, t, compare="difference", allowed=(p - 1e-9, p + 1e-9))
    assert unpaired.verdict == "inconclusive"


# -- skill -----------------------------------------------------------------------------------------


def test_skill_matches_a_direct_computation_and_its_edges():
    from solidrl.probes.check.verdict import skill

    g = np.random.default_rng(10)
    o = g.standard_normal((1, 40))
    p = 0.8 * o + 0.3 * g.standard_normal((1, 40))
    est, _ = skill(p, o)
    want = 1 - np.mean((o - p) ** 2) / np.mean((o - p.mean()) ** 2)
    assert est.value == pytest.approx(want, rel=1e-12) and est.lo > 0
    assert skill(o, o)[0].value == pytest.approx(1.0)
    # a predictor unrelated to the observations: no skill beyond its average
    est0, _ = skill(g.standard_normal((3, 30)), g.standard_normal((3, 30)))
    assert est0.value < 0 and not est0.lo > 0


# -- severity --------------------------------------------------------------------------------------


def test_severity_rules():
    from solidrl.probes.check.verdict import Estimate, severity

    est = Estimate(1.94, 1.90, 1.98)
    good_skill, no_skill = Estimate(0.5, 0.3, 0.7), Estimate(0.1, -0.2, 0.4)
    # a constant: the no-effect value 1 +- 0.15 is refuted, but no rival was named
    assert severity("confirmed", est, "ratio", 0.15, [], None, constant=True)[0] is False
    # a rival inside the interval's reach is not refuted; one far away is
    ok, why = severity("confirmed", est, "ratio", 0.15, [("formula", 1.85)], None, constant=True)
    assert ok is False and "formula" in why
    assert severity("confirmed", est, "ratio", 0.15, [("two", 3.0)], None, constant=True)[0] is True
    # a predictor: severe with skill above 0, not without
    assert severity("confirmed", est, "ratio", 0.15, [], good_skill, constant=False)[0] is True
    assert severity("confirmed", est, "ratio", 0.15, [], no_skill, constant=False)[0] is False
    # the no-effect value not refuted: a difference of 0.05 +- 0.1 around an interval [0.0, 0.1]
    ok, why = severity("confirmed", Estimate(0.05, 0.0, 0.1), "difference", 0.1, [], good_skill, False)
    assert ok is False and "no-effect" in why
    assert severity("refuted", est, "ratio", 0.15, [], good_skill, False) == (False, "not confirmed (refuted)")


def test_seed_t_intervals_stay_in_the_statistics_range():
    # two seeds with sign agreement 0.9 and 1.0: t_{0.95, 1} = 6.31 would put the upper end at 1.27;
    # a fraction cannot exceed 1, so the interval is cut there.
    g = np.random.default_rng(11)
    p = g.standard_normal((2, 10)) + 3.0
    o = p.copy()
    o[0, 0] = -1.0   # seed 0: 9 of 10 signs agree; seed 1: all 10
    c = judge_per_step(p, o, min_sign_agreement=0.5).criteria[0].estimate
    assert c.value == pytest.approx(0.95) and c.hi == 1.0 and 0.0 <= c.lo < 0.95

"""Off-policy (theory.offpolicy): symbolic checks, predictors vs their derivations, and Monte Carlo against
the trainer's own PPO clip and corrections (trainer/algos.py) on Gaussian log-ratios.
"""
import math

import numpy as np
import pytest
import torch

from solidrl.theory import offpolicy
from solidrl.theory.predictors import PREDICTORS

algos = pytest.importorskip("solidrl.trainer.algos")
# float64 as torch's default inside this module's tests only (conftest.float64_default): set at import, it
# leaked into every other test of the session and changed the trainer's numbers there
pytestmark = pytest.mark.usefixtures("float64_default")

N_MC = 400_000


def gaussian_batch(m, s, seed, frac_pos=0.6):
    g = torch.Generator().manual_seed(seed)
    log_ratio = m + s * torch.randn(N_MC, generator=g)
    u = torch.rand(N_MC, generator=g)
    adv = torch.where(u < frac_pos, 1.0, torch.where(u < frac_pos + 0.3, -1.0, 0.0))  # 10% exactly zero
    return {"log_ratio": log_ratio, "adv": adv}


def _knobs(**kv):
    """The run's settings as the recorder writes them: 0-d float64 stats (docs/contracts.md)."""
    return {k: torch.tensor(float(v), dtype=torch.float64) for k, v in kv.items()}


def mc_tol(p):
    """5 binomial standard errors of a Monte Carlo fraction p over N_MC draws (plus float slack)."""
    return 5 * math.sqrt(max(p * (1 - p), 1e-12) / N_MC) + 1e-9


@pytest.mark.parametrize("name", ["ratio_decomposition", "clip_frac", "tis", "icepop"])
def test_offpolicy_symbolic(name):
    assert all(getattr(offpolicy, f"derive_{name}")().verify().values())


def test_ratio_decomposition_staleness_spread_is_twice_kl():
    """After a logit step of size eps: E_pi (log pi_new/pi_old)^2 / (2 KL) -> 1 as eps -> 0."""
    g = torch.Generator().manual_seed(0)
    z, d = 2 * torch.randn(500, generator=g), torch.randn(500, generator=g)
    gaps = []
    for eps in (0.02, 0.01):
        l0, l1 = torch.log_softmax(z, -1), torch.log_softmax(z + eps * d, -1)
        p = l0.exp()
        second, kl = (p * (l1 - l0) ** 2).sum(), (p * (l0 - l1)).sum()
        gaps.append(abs(float(second / (2 * kl)) - 1))
    assert gaps[0] < 0.05 and 1.5 < gaps[0] / gaps[1] < 2.5, gaps  # the gap is O(eps)


def _lambdified(name, metric, **values):
    d = getattr(offpolicy, f"derive_{name}")()
    keys = list(values)
    return float(d.lambdify(metric, [d.symbols[k] for k in keys])(*values.values()))


@pytest.mark.parametrize("m,s", [(0.0, 0.1), (-0.05, 0.3), (0.2, 1.0)])
def test_clip_frac_predictor_equals_lambdified_derivation(m, s):
    st = gaussian_batch(m, s, 0)
    got = PREDICTORS.get("clip_frac")({**st, **_knobs(eps_low=0.2, eps_high=0.28)})
    lr = st["log_ratio"]
    fit = dict(m=float(lr.mean()), s=float(lr.std(correction=0)), eps_low=0.2, eps_high=0.28,
               f_pos=float((st["adv"] > 0).double().mean()), f_neg=float((st["adv"] < 0).double().mean()))
    assert set(got) == {"ratio/clip_frac", "ratio/clip_frac_high", "ratio/clip_frac_low"}
    for metric in got:
        assert got[metric] == pytest.approx(_lambdified("clip_frac", metric, **fit), rel=1e-12)


@pytest.mark.parametrize("m,s", [(0.0, 0.1), (-0.05, 0.3), (0.2, 1.0)])
def test_clip_frac_matches_trainer_ppo_clip_by_monte_carlo(m, s):
    """Active clip = the trainer's ppo_clip passes no gradient to that token's logp (counted by autograd)."""
    st = gaussian_batch(m, s, 1)
    logp = st["log_ratio"].clone().requires_grad_()
    zeros = torch.zeros_like(logp)
    p = algos.PolicyLossParams(eps_low=0.2, eps_high=0.28)
    loss = algos.POLICY_LOSSES.get("ppo_clip")(logp[None], zeros[None], st["adv"][None], torch.ones(1, N_MC), p)
    loss.sum().backward()
    clipped = (logp.grad == 0) & (st["adv"] != 0)
    pred = PREDICTORS.get("clip_frac")({**st, **_knobs(eps_low=0.2, eps_high=0.28)})
    for metric, side in (("ratio/clip_frac", st["adv"] != 0), ("ratio/clip_frac_high", st["adv"] > 0),
                         ("ratio/clip_frac_low", st["adv"] < 0)):
        observed = float((clipped & side).double().mean())
        assert abs(pred[metric] - observed) < mc_tol(observed), (metric, pred[metric], observed)


def test_clip_frac_fully_on_policy_is_zero():
    st = {"log_ratio": torch.zeros(100), "adv": torch.randn(100)}
    assert PREDICTORS.get("clip_frac")({**st, **_knobs(eps_low=0.2, eps_high=0.2)})["ratio/clip_frac"] == 0.0


@pytest.mark.parametrize("m,s,C", [(0.0, 0.2, 2.0), (-0.1, 0.5, 1.5), (0.1, 1.0, 2.0)])
def test_tis_predictor_equals_lambdified_derivation_and_trainer_by_monte_carlo(m, s, C):
    st = gaussian_batch(m, s, 2)
    got = PREDICTORS.get("tis")({**st, **_knobs(tis_cap=C)})
    lr = st["log_ratio"]
    fit = dict(m=float(lr.mean()), s=float(lr.std(correction=0)), C=C)
    for metric in got:
        assert got[metric] == pytest.approx(_lambdified("tis", metric, **fit), rel=1e-10)
    p = algos.CorrectionParams(tis_cap=C)
    w = algos.CORRECTIONS.get("tis")(lr[None], torch.ones(1, N_MC), p)
    touched = float(algos.touched("tis", lr[None], torch.ones(1, N_MC), p).double().mean())
    assert abs(got["correction/touched_frac"] - touched) < mc_tol(touched)
    # the mean of a capped lognormal: its MC std is below std(min(rho, C)) / sqrt(N)
    assert abs(got["correction/weight_mean"] - float(w.mean())) < 5 * float(w.std()) / N_MC**0.5


@pytest.mark.parametrize("m,s,alpha,beta", [(0.0, 0.2, 0.5, 2.0), (-0.1, 0.6, 0.5, 5.0), (0.0, 1.0, 0.8, 1.25)])
def test_icepop_predictor_equals_lambdified_derivation_and_trainer_by_monte_carlo(m, s, alpha, beta):
    st = gaussian_batch(m, s, 3)
    got = PREDICTORS.get("icepop")({**st, **_knobs(icepop_low=alpha, icepop_high=beta)})
    lr = st["log_ratio"]
    fit = dict(m=float(lr.mean()), s=float(lr.std(correction=0)), alpha=alpha, beta=beta)
    for metric in got:
        assert got[metric] == pytest.approx(_lambdified("icepop", metric, **fit), rel=1e-10)
    p = algos.CorrectionParams(icepop_low=alpha, icepop_high=beta)
    w = algos.CORRECTIONS.get("icepop")(lr[None], torch.ones(1, N_MC), p)
    touched = float(algos.touched("icepop", lr[None], torch.ones(1, N_MC), p).double().mean())
    assert abs(got["correction/touched_frac"] - touched) < mc_tol(touched)
    assert abs(got["correction/weight_mean"] - float(w.mean())) < 5 * float(w.std()) / N_MC**0.5


def test_predictors_read_their_knobs_from_the_stats_and_name_a_missing_one():
    """No copied defaults: a cap or clip range absent from the stats is a MissingStatError naming it."""
    from solidrl.theory.predictors import MissingStatError

    st = gaussian_batch(0.0, 0.3, 3)
    for name, key in (("clip_frac", "eps_low"), ("tis", "tis_cap"), ("icepop", "icepop_low")):
        with pytest.raises(MissingStatError, match=key):
            PREDICTORS.get(name)(st)
    a = PREDICTORS.get("tis")({**st, **_knobs(tis_cap=1.5)})["correction/touched_frac"]
    b = PREDICTORS.get("tis")({**st, **_knobs(tis_cap=2.5)})["correction/touched_frac"]
    assert a > b > 0


def test_tis_point_mass_when_log_ratios_are_all_equal():
    """s = 0: the Gaussian degenerates to a point; touched is 0 or 1, the mean weight is min(e^m, C)."""
    for m, want in ((0.0, (0.0, 1.0)), (1.0, (1.0, 2.0))):
        out = PREDICTORS.get("tis")({"log_ratio": torch.full((10,), m), **_knobs(tis_cap=2.0)})
        assert (out["correction/touched_frac"], out["correction/weight_mean"]) == pytest.approx(want)
    assert np.isfinite(list(PREDICTORS.get("icepop")({"log_ratio": torch.zeros(3), **_knobs(icepop_low=0.5, icepop_high=2.0)}).values())).all()


# ----------------------------------------------------------------------------------------------
# Issue 19's corrections: tis_two_sided (token level), seq_tis, masked_seq_is, geo_rs (sequence level)


@pytest.mark.parametrize("name", ["tis_two_sided", "seq_tis", "masked_seq_is", "geo_rs"])
def test_new_corrections_symbolic(name):
    """Each closed form against sympy's integral of the Gaussian density (and, sequence-level, the MGF of the
    row's sum / mean): every residual simplifies to 0."""
    res = getattr(offpolicy, f"derive_{name}")().verify()
    assert res and all(res.values()), res


@pytest.mark.parametrize("m,s,low,C", [(0.0, 0.3, 0.5, 2.0), (-0.1, 0.6, 0.8, 1.5), (0.1, 1.0, 0.2, 3.0)])
def test_tis_two_sided_predictor_equals_lambdified_derivation_and_trainer_by_monte_carlo(m, s, low, C):
    st = gaussian_batch(m, s, 4)
    got = PREDICTORS.get("tis_two_sided")({**st, **_knobs(tis_cap=C, tis_low=low)})
    lr = st["log_ratio"]
    fit = dict(m=float(lr.mean()), s=float(lr.std(correction=0)), C=C, low=low)
    assert set(got) == {"correction/touched_frac", "correction/weight_mean"}
    for metric in got:
        assert got[metric] == pytest.approx(_lambdified("tis_two_sided", metric, **fit), rel=1e-10)
    p, one = algos.CorrectionParams(tis_cap=C), torch.ones(1, N_MC)
    w = algos.CORRECTIONS.get("tis_two_sided")(lr[None], one, p, low=low)
    touched = float(algos.touched("tis_two_sided", lr[None], one, p, low=low).double().mean())
    assert abs(got["correction/touched_frac"] - touched) < mc_tol(touched)
    assert abs(got["correction/weight_mean"] - float(w.mean())) < 5 * float(w.std()) / N_MC**0.5


@pytest.mark.parametrize("m,s,low,C", [(0.0, 0.3, 0.5, 2.0), (0.05, 0.8, 0.9, 1.2)])
def test_tis_two_sided_exact_enumeration_of_gaussian_quantiles(m, s, low, C):
    """Exact enumeration: on the n midpoint quantiles of N(m, s^2) the trainer's touched count is the
    number of quantiles beyond the bounds, which differs from the Gaussian mass by under 1/n per bound;
    the quantile grid's own std (below s by O(log n / n)) moves the prediction by less than that again."""
    n = 20_001
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    lr = m + s * math.sqrt(2) * torch.erfinv(2 * u - 1)
    p = algos.CorrectionParams(tis_cap=C)
    touched = float(algos.touched("tis_two_sided", lr[None], torch.ones(1, n), p, low=low).double().mean())
    got = PREDICTORS.get("tis_two_sided")({"log_ratio": lr, **_knobs(tis_cap=C, tis_low=low)})
    assert abs(got["correction/touched_frac"] - touched) < 4 / n, (got, touched)
    # and against the Gaussian's exact mass at the true (m, s)
    exact = _lambdified("tis_two_sided", "correction/touched_frac", m=m, s=s, C=C, low=low)
    assert abs(exact - touched) < 2 / n


def _rows_batch(m, s, lengths, rows_per_length, seed):
    """[B, T] iid N(m, s^2) log-ratios, row b with its own length from `lengths` (the rest masked), and the
    stats the recorder would write for its loss tokens: log_ratio [N], seq_index [N]."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    L = torch.tensor(lengths).repeat_interleave(rows_per_length)
    mask = (torch.arange(T)[None, :] < L[:, None]).double()
    lr = m + s * torch.randn(len(L), T, generator=g)
    lr = torch.where(mask > 0, lr, torch.full_like(lr, 7.0))  # padding far outside every bound: must not count
    sel = mask > 0
    seq_index = torch.arange(len(L))[:, None].expand_as(lr)[sel]
    return lr, mask, {"log_ratio": lr[sel], "seq_index": seq_index}


def _seq_tol(p, rows):
    """5 standard errors of a token-weighted fraction of whole rows: rows are the independent units."""
    return 5 * math.sqrt(max(p * (1 - p), 1e-12) / rows) + 1e-9


@pytest.mark.parametrize("m,s,C,mode", [(0.0, 0.2, 2.0, "truncate"), (-0.02, 0.3, 1.5, "mask"), (0.05, 0.15, 2.0, "truncate")])
def test_seq_tis_predictor_equals_lambdified_derivation_and_trainer_by_monte_carlo(m, s, C, mode):
    lengths = (1, 4, 16)
    lr, mask, st = _rows_batch(m, s, lengths, 40_000, 5)
    got = PREDICTORS.get("seq_tis")({**st, **_knobs(tis_cap=C)})
    x = st["log_ratio"]
    fit = dict(m=float(x.mean()), s=float(x.std(correction=0)), C=C)
    per_len = [_lambdified("seq_tis", "correction/touched_frac", L=L, **fit) for L in lengths]
    assert got["correction/touched_frac"] == pytest.approx(sum(L * p for L, p in zip(lengths, per_len)) / sum(lengths),
                                                           rel=1e-10)
    touched = algos.touched("seq_tis", lr, mask, algos.CorrectionParams(tis_cap=C), mode=mode).double()
    observed = float(touched.sum() / mask.sum())
    assert abs(got["correction/touched_frac"] - observed) < _seq_tol(observed, 40_000), (got, observed)
    assert len(set(per_len)) == 3  # the length matters: one pooled rate would not fit


SEQ_REJECT_CASES = [(0.0, 0.5, 0.8, 1.25), (0.05, 1.0, 0.5, 2.0)]


@pytest.mark.parametrize("m,s,lo,hi", SEQ_REJECT_CASES)
def test_masked_seq_is_predictor_equals_lambdified_derivation_and_trainer_by_monte_carlo(m, s, lo, hi):
    _check_seq_reject("masked_seq_is", m, s, lo, hi)


@pytest.mark.parametrize("m,s,lo,hi", SEQ_REJECT_CASES)
def test_geo_rs_predictor_equals_lambdified_derivation_and_trainer_by_monte_carlo(m, s, lo, hi):
    _check_seq_reject("geo_rs", m, s, lo, hi)


def _check_seq_reject(name, m, s, lo, hi):
    lengths = (1, 3, 12)
    lr, mask, st = _rows_batch(m, s, lengths, 40_000, 6)
    got = PREDICTORS.get(name)({**st, **_knobs(seq_low=lo, seq_high=hi)})
    x = st["log_ratio"]
    fit = dict(m=float(x.mean()), s=float(x.std(correction=0)), seq_low=lo, seq_high=hi)
    per_len = [_lambdified(name, "correction/touched_frac", L=L, **fit) for L in lengths]
    assert got["correction/touched_frac"] == pytest.approx(sum(L * p for L, p in zip(lengths, per_len)) / sum(lengths),
                                                           rel=1e-10)
    p = algos.CorrectionParams(seq_low=lo, seq_high=hi)
    observed = float(algos.touched(name, lr, mask, p).double().sum() / mask.sum())
    assert abs(got["correction/touched_frac"] - observed) < _seq_tol(observed, 40_000), (got, observed)


def test_seq_reject_verl_k1_scalars_mirror_the_bounds():
    """The recorder writes seq_low / seq_high on the ratio: for convention verl_k1 the mirrored band, so the
    prediction matches the trainer's rejection under that convention."""
    from solidrl.probes.recorder import run_scalars
    from solidrl.trainer.config import TrainConfig, apply_overrides

    cfg = apply_overrides(TrainConfig(), {"offpolicy.correction": "masked_seq_is", "offpolicy.correction.convention": "verl_k1",
                                          "offpolicy.seq_low": 0.5, "offpolicy.seq_high": 4.0})
    sc = run_scalars(cfg)
    assert (float(sc["seq_low"]), float(sc["seq_high"])) == pytest.approx((0.25, 2.0))
    lr, mask, st = _rows_batch(0.3, 0.6, (2, 6), 20_000, 7)
    got = PREDICTORS.get("masked_seq_is")({**st, **sc})["correction/touched_frac"]
    p = algos.CorrectionParams(seq_low=0.5, seq_high=4.0)
    observed = float(algos.touched("masked_seq_is", lr, mask, p, convention="verl_k1").double().sum() / mask.sum())
    assert abs(got - observed) < _seq_tol(observed, 40_000), (got, observed)


def test_seq_predictors_point_mass_and_empty_rows():
    """s = 0: each row is touched or not by its L m alone; no loss token at all: nothing predicted."""
    st = {"log_ratio": torch.full((5,), 0.3), "seq_index": torch.tensor([0, 0, 0, 1, 1])}
    # rows of 3 and 2 tokens: sums 0.9 > log 2 = 0.693 only for the 3-token row -> 3 of 5 tokens
    assert PREDICTORS.get("seq_tis")({**st, **_knobs(tis_cap=2.0)})["correction/touched_frac"] == pytest.approx(0.6)
    assert PREDICTORS.get("geo_rs")({**st, **_knobs(seq_low=0.5, seq_high=1.2)})["correction/touched_frac"] == 1.0
    empty = {"log_ratio": torch.zeros(0), "seq_index": torch.zeros(0, dtype=torch.long)}
    assert PREDICTORS.get("seq_tis")({**empty, **_knobs(tis_cap=2.0)}) == {}

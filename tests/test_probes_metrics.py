"""solidrl.probes.metrics: every metric function against an independent computation.

References share no code with the module: scipy / numpy restatements on hand examples, exact
enumeration over small vocabularies and sample sets, autograd for gradients, and seeded Monte Carlo
for the sampled KL estimators (tolerances in standard errors, stated where used).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from solidrl.probes import metrics as M

hyp = settings(max_examples=60, deadline=None, derandomize=True)
F64 = torch.float64
INF = math.inf


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


@st.composite
def logit_rows(draw, max_v=7, max_n=4, banned=True):
    """[N, V] float64 logits in [-30, 30], some entries -inf (banned tokens), never a whole row."""
    n, v = draw(st.integers(1, max_n)), draw(st.integers(1, max_v))
    z = draw(hnp.arrays(np.float64, (n, v), elements=st.floats(-30, 30, allow_nan=False)))
    if banned and v > 1:
        ban = draw(hnp.arrays(np.bool_, (n, v)))
        ban[:, 0] = False  # keep one token allowed per row
        z = np.where(ban, -np.inf, z)
    return torch.from_numpy(z)


def np_softmax(z):
    return scipy.special.softmax(np.asarray(z, dtype=np.float64), axis=-1)


# -- distributions ---------------------------------------------------------------------------------


def test_softmax_stats_on_a_hand_example():
    # logits log(1, 2, 3) -> p = (1/6, 2/6, 3/6)
    z = torch.log(t([[1.0, 2.0, 3.0]]))
    s = M.softmax_stats(z, ids=torch.tensor([[2]]).reshape(1))
    p = np.array([1, 2, 3]) / 6
    assert s["entropy"].item() == pytest.approx(scipy.stats.entropy(p), rel=1e-14)
    assert s["sum_p2"].item() == pytest.approx(14 / 36, rel=1e-14)            # (1 + 4 + 9) / 36
    assert s["sum_p3"].item() == pytest.approx(36 / 216, rel=1e-14)           # (1 + 8 + 27) / 216
    assert s["sum_p2_logp"].item() == pytest.approx(float((p**2 * np.log(p)).sum()), rel=1e-14)
    assert s["logp"].item() == pytest.approx(math.log(0.5), rel=1e-14)


def test_softmax_stats_keeps_leading_shape_and_matches_scipy_per_row():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 11, generator=g, dtype=torch.float32) * 3
    ids = torch.randint(0, 11, (2, 3), generator=g)
    s = M.softmax_stats(z, ids)
    p = np_softmax(z.double().numpy())
    assert s["entropy"].shape == (2, 3) and s["entropy"].dtype == F64
    np.testing.assert_allclose(s["entropy"].numpy(), scipy.stats.entropy(p, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(s["logp"].numpy(), np.log(np.take_along_axis(p, ids.numpy()[..., None], -1))[..., 0],
                               rtol=1e-12)


def test_chunking_changes_nothing():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(37, 13, generator=g), torch.randn(37, 13, generator=g)
    ids = torch.randint(0, 13, (37,), generator=g)
    whole, one_row = M.softmax_stats(a, ids), M.softmax_stats(a, ids, chunk_elements=1)
    pw, p1 = M.pair_stats(a, b, ids), M.pair_stats(a, b, ids, chunk_elements=20)  # 1 row per chunk
    for k in whole:
        assert torch.equal(whole[k], one_row[k]), k
    for k in pw:
        assert torch.equal(pw[k], p1[k]), k


@hyp
@given(logit_rows())
def test_entropy_lies_in_zero_to_log_v(z):
    h = M.entropy_exact(z)
    allowed = torch.isfinite(z).sum(-1).to(F64)
    assert (h >= 0).all()
    assert (h <= torch.log(allowed) + 1e-12).all()  # log of the support size <= log V


def test_entropy_edges_one_hot_and_uniform():
    assert M.entropy_exact(t([[0.0, -INF, -INF]])).item() == 0.0          # one allowed token: H = 0 exactly
    assert M.entropy_exact(t([[5.0, 5.0, 5.0, 5.0]])).item() == pytest.approx(math.log(4), rel=1e-15)
    assert M.entropy_exact(t([[1e4, 0.0, 0.0]])).item() == 0.0            # p = (1, e^-1e4, ...) underflows


def test_sampled_entropy_is_minus_logp():
    assert torch.equal(M.sampled_entropy(t([-0.5, -2.0])), t([0.5, 2.0]))


@hyp
@given(logit_rows(), st.data())
def test_kl_exact_matches_scipy_and_is_nonnegative(zp, data):
    zq = data.draw(hnp.arrays(np.float64, tuple(zp.shape), elements=st.floats(-30, 30, allow_nan=False)))
    zq = torch.from_numpy(zq)  # q has full support, so KL(p||q) is finite
    kl = M.kl_exact(zp, zq)
    ref = scipy.stats.entropy(np_softmax(zp.numpy()), np_softmax(zq.numpy()), axis=-1)  # scipy: KL(p||q)
    assert (kl >= 0).all()
    np.testing.assert_allclose(kl.numpy(), ref, rtol=1e-9, atol=1e-12)


@hyp
@given(logit_rows())
def test_kl_of_a_policy_with_itself_is_exactly_zero(z):
    assert torch.equal(M.kl_exact(z, z), torch.zeros(z.shape[0], dtype=F64))


def test_kl_exact_support_edges():
    # q bans a token p can sample: KL(p||q) = +inf (not clamped); the other way it is finite:
    # KL(q||p) with q = (1, 0), p = (1/2, 1/2): 1 * log(1 / (1/2)) = log 2
    p, q = t([[0.0, 0.0]]), t([[0.0, -INF]])
    assert M.kl_exact(p, q).item() == INF
    assert M.kl_exact(q, p).item() == pytest.approx(math.log(2), rel=1e-15)


def test_pair_stats_agree_with_the_single_policy_functions():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(9, 6, generator=g), torch.randn(9, 6, generator=g)
    ids = torch.randint(0, 6, (9,), generator=g)
    ps = M.pair_stats(a, b, ids)
    torch.testing.assert_close(ps["entropy_p"], M.entropy_exact(a), rtol=0, atol=0)
    torch.testing.assert_close(ps["entropy_q"], M.entropy_exact(b), rtol=0, atol=0)
    torch.testing.assert_close(ps["kl_qp"], M.kl_exact(b, a), rtol=0, atol=0)
    torch.testing.assert_close(ps["logp_q"], M.softmax_stats(b, ids)["logp"], rtol=0, atol=0)


# -- sampled KL estimators -------------------------------------------------------------------------

P5 = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
Q5 = np.array([0.3, 0.3, 0.2, 0.1, 0.1])


def _kl(p, q):
    return float((p * np.log(p / q)).sum())


def test_k1_k3_are_unbiased_and_k2_has_its_f_divergence_mean_by_enumeration():
    # E_{a~p} k(a) = sum_a p(a) k(a), exactly, over every token of a 5-token vocabulary.
    lp, lq = t(np.log(P5)), t(np.log(Q5))
    fwd, rev = M.kl_sampled(lp, lq), M.kl_sampled(lp, lq, reverse=True)
    w = t(P5)
    assert float((w * fwd["k1"]).sum()) == pytest.approx(_kl(P5, Q5), rel=1e-12)
    assert float((w * fwd["k3"]).sum()) == pytest.approx(_kl(P5, Q5), rel=1e-12)
    # k2's mean is E_p[(log q/p)^2]/2, not the KL (equal to second order only)
    assert float((w * fwd["k2"]).sum()) == pytest.approx(float((P5 * np.log(Q5 / P5) ** 2).sum() / 2), rel=1e-12)
    assert float((w * fwd["k2"]).sum()) != pytest.approx(_kl(P5, Q5), rel=1e-3)
    # reverse: importance-weighted by r = q/p, samples still from p
    assert float((w * rev["k1"]).sum()) == pytest.approx(_kl(Q5, P5), rel=1e-12)
    assert float((w * rev["k3"]).sum()) == pytest.approx(_kl(Q5, P5), rel=1e-12)
    assert "k2" not in rev


def test_k1_k3_unbiased_and_k2_k3_nonnegative_under_monte_carlo():
    # 400k draws; tolerance 4 standard errors of the sample mean (a false alarm ~ 6e-5 per check).
    rng = np.random.default_rng(0)
    a = rng.choice(5, size=400_000, p=P5)
    lp, lq = t(np.log(P5)[a]), t(np.log(Q5)[a])
    for est, target in ((M.kl_sampled(lp, lq), _kl(P5, Q5)), (M.kl_sampled(lp, lq, reverse=True), _kl(Q5, P5))):
        for k in ("k1", "k3"):
            x = est[k].numpy()
            assert abs(x.mean() - target) < 4 * x.std() / math.sqrt(len(x)), k
        assert (est["k3"] >= 0).all()
    assert (M.kl_sampled(lp, lq)["k2"] >= 0).all()


@hyp
@given(hnp.arrays(np.float64, 8, elements=st.floats(-40, 0)), hnp.arrays(np.float64, 8, elements=st.floats(-40, 0)))
def test_k2_k3_nonnegative_for_any_log_probs(lp, lq):
    for est in (M.kl_sampled(t(lp), t(lq)), M.kl_sampled(t(lp), t(lq), reverse=True)):
        assert (est["k3"] >= 0).all()
        assert ("k2" not in est) or (est["k2"] >= 0).all()


# -- aggregates -------------------------------------------------------------------------------------


def test_token_mean_and_seq_mean_worked_example():
    x = t([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [7.0, 7.0, 7.0]])
    m = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])         # third row empty
    assert M.token_mean(x, m).item() == pytest.approx(7 / 3)       # (1 + 2 + 4) / 3
    assert M.seq_mean(x, m).item() == pytest.approx(5.5 / 3)      # ((1 + 2) / 2 + 4 + 0) / 3: the empty row counts
    assert M.seq_mean(x, m, empty_rows="skip").item() == pytest.approx(2.75)  # ((1 + 2) / 2 + 4) / 2 (verl)
    assert math.isnan(M.seq_mean(x, torch.zeros_like(m)).item())   # no row with a token: not computable


def test_seq_mean_equals_the_trainer_aggregation_on_empty_rows():
    # the metric and the loss agree (issue 19): seq_mean(x) == AGGREGATIONS["seq-mean-token-mean"](x) for both semantics
    from solidrl.trainer.algos import AGGREGATIONS
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    m = (torch.rand(6, 5, generator=g) < 0.5).double()
    m[1] = 0.0
    m[4] = 0.0
    agg = AGGREGATIONS.get("seq-mean-token-mean")
    for rows in ("count", "skip"):
        assert M.seq_mean(x, m, empty_rows=rows).item() == pytest.approx(agg(x, m, 0.0, empty_rows=rows).item(), rel=1e-12)


# -- ratio, mismatch, covariance ------------------------------------------------------------------


def test_ratio_stats_worked_example():
    r = np.array([0.5, 0.9, 1.3, 1.1, 4.0])
    adv = t([-1.0, -1.0, 1.0, 1.0, -1.0])
    s = M.ratio_stats(t(np.log(r)), adv, eps_low=0.2, eps_high=0.2, dual_clip_c=3.0)
    assert s["clip_frac_low"] == pytest.approx(1 / 5)     # r=0.5 < 0.8 with A<0
    assert s["clip_frac_high"] == pytest.approx(1 / 5)    # r=1.3 > 1.2 with A>0 (r=1.1 is inside)
    assert s["clip_frac"] == pytest.approx(2 / 5)
    assert s["dual_clip_frac"] == pytest.approx(1 / 5)    # r=4 > c=3 with A<0
    assert s["mean"] == pytest.approx(7.8 / 5) and s["min"] == pytest.approx(0.5) and s["max"] == pytest.approx(4.0)
    assert s["log_std"] == pytest.approx(float(np.std(np.log(r))))
    assert M.ratio_stats(t([]), t([]), 0.2, 0.2, 3.0) == {}


def test_ratio_of_one_never_clips():
    s = M.ratio_stats(torch.zeros(50, dtype=F64), torch.linspace(-2, 2, 50, dtype=F64), 0.0, 0.0, 1.01)
    assert s["clip_frac"] == 0.0 and s["dual_clip_frac"] == 0.0 and s["mean"] == 1.0 and s["log_std"] == 0.0


def test_mismatch_stats_worked_example():
    train, roll = t([-1.0, -2.0, -0.5]), t([-1.1, -2.0, -0.2])
    s = M.mismatch_stats(train, roll)
    assert s["logp_abs_mean"] == pytest.approx(0.4 / 3) and s["logp_abs_max"] == pytest.approx(0.3)
    d = np.array([-1.0, -2.0, -0.5]) - np.array([-1.1, -2.0, -0.2])   # log(pi_train / pi_rollout)
    assert s["kl_k1"] == pytest.approx(float((-d).mean()))
    assert s["kl_k3"] == pytest.approx(float((np.exp(d) - 1 - d).mean()))


def test_cov_logp_adv_matches_numpy():
    rng = np.random.default_rng(3)
    x, y = -rng.exponential(size=40), rng.normal(size=40)
    assert M.cov_logp_adv(t(x), t(y)) == pytest.approx(float(np.cov(x, y, bias=True)[0, 1]), rel=1e-12)


def test_top_frac_weight_worked_example():
    score = t([5, 4, 3, 2, 1, 0, 0, 0, 0, 0])                  # N = 10: the top ceil(0.2 * 10) = 2 tokens
    weight = t([1, -1, 2, 2, 2, 2, 0, 0, 0, 0])                # sum |w| = 10, top two carry 2
    assert M.top_frac_weight(score, weight, 0.2) == pytest.approx(0.2)
    assert M.top_frac_weight(t([3, 2, 1]), t([0, 0, 0])) is None   # no update weight: not computable
    assert M.top_frac_weight(t([3, 2, 1]), t([1, 1, 1]), 0.2) == pytest.approx(1 / 3)  # ceil(0.6) = 1 token


# -- outcomes --------------------------------------------------------------------------------------


def test_pass_at_k_matches_enumeration_of_subsets():
    for n in range(1, 7):
        for c in range(n + 1):
            row = [1.0] * c + [0.0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                want = sum(any(row[i] for i in s) for s in subsets) / len(subsets)
                assert M.pass_at_k(t([row]), k) == pytest.approx(want, abs=1e-12), (n, c, k)


def test_pass_at_k_averages_groups_and_refuses_bad_k():
    correct = t([[1, 0, 0, 0], [1, 1, 0, 0]])
    # group 1: pass@2 = 1 - C(3,2)/C(4,2) = 1/2; group 2: 1 - C(2,2)/C(4,2) = 5/6
    assert M.pass_at_k(correct, 2) == pytest.approx((1 / 2 + 5 / 6) / 2)
    with pytest.raises(ValueError, match="1 <= k <= group size 4"):
        M.pass_at_k(correct, 5)


def test_advantage_stats_zero_groups():
    adv = t([0, 0, 0, 0, -1, 1, -1, 1, 0, 0, 0, 0])   # groups of 4: first and last all zero
    s = M.advantage_stats(adv, 4)
    assert s["zero_frac"] == pytest.approx(2 / 3)
    assert s["mean"] == 0.0 and s["abs_mean"] == pytest.approx(4 / 12)
    assert s["std"] == pytest.approx(float(np.std(adv.numpy())))


# -- parameters ------------------------------------------------------------------------------------


def test_param_group_names():
    assert M.param_group("model.embed_tokens.weight") == "embed"
    assert M.param_group("model.layers.0.self_attn.q_proj.weight") == "layer0"
    assert M.param_group("model.layers.11.mlp.up_proj.weight") == "layer11"
    assert M.param_group("lm_head.weight") == "head"
    assert M.param_group("model.norm.weight") == "other"
    assert M.param_group("transformer.wte.weight") == "embed"       # GPT-2 names
    assert M.param_group("transformer.wpe.weight") == "embed"
    assert M.param_group("transformer.h.3.attn.c_attn.weight") == "layer3"
    assert M.param_group("transformer.ln_f.weight") == "other"


class _Toy(torch.nn.Module):
    """loss = <E, a> + <W0, b> + <W1, c> + <H, d> has gradients a, b, c, d exactly."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Linear(2, 2, bias=False)
        self.model.layers = torch.nn.ModuleList([torch.nn.Linear(3, 1, bias=False), torch.nn.Linear(2, 1, bias=False)])
        self.lm_head = torch.nn.Linear(1, 1, bias=False)


def test_group_norms_match_autograd_and_hand_norms():
    toy = _Toy()
    a, b, c, d = t([[3.0, 4.0], [0.0, 0.0]]), t([[1.0, 2.0, 2.0]]), t([[6.0, 8.0]]), t([[-2.0]])
    toy.double()
    loss = sum((p * g).sum() for p, g in zip(toy.parameters(), (a, b, c, d)))
    loss.backward()
    names = [n for n, _ in toy.named_parameters()]
    norms = M.group_norms([p.grad for p in toy.parameters()], [M.param_group(n) for n in names])
    assert norms == pytest.approx({"embed": 5.0, "layer0": 3.0, "layer1": 10.0, "head": 2.0})
    total = torch.nn.utils.get_total_norm([p.grad for p in toy.parameters()])
    assert math.sqrt(sum(v**2 for v in norms.values())) == pytest.approx(float(total), rel=1e-14)


def test_update_stats_worked_example():
    before, after = t([3.0, 4.0, 0.0, 0.0]), t([3.0, 4.0, 0.3, -0.4])
    s = M.update_stats(before, after, lr=0.1)
    assert s["norm"] == pytest.approx(0.5) and s["rel_norm"] == pytest.approx(0.1)   # 0.5 / 5
    assert s["norm_over_lr"] == pytest.approx(5.0) and s["rms_over_lr"] == pytest.approx(2.5)  # 5 / sqrt(4)
    assert "norm_over_lr" not in M.update_stats(before, after, lr=0.0)

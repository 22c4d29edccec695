"""solidrl.trainer.algos: every registered function against a hand computation and an independent reference.

Worked examples carry their arithmetic in comments. References share no code with the module:
numpy / scipy / torch.distributions restatements, exact enumeration over a small vocabulary, and
autograd of the formula as written in the paper. Hypothesis checks the invariants over each
argument's domain (derandomized, so every run draws the same cases).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from solidrl.theory.registry import UnknownNameError
from solidrl.trainer.config import ConfigError
from solidrl.trainer.algos import (
    ADVANTAGES,
    AGGREGATIONS,
    CORRECTIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    CorrectionParams,
    PolicyLossParams,
    entropy_from_logits,
    gather_logprobs,
    token_weights,
    touched,
)

hyp = settings(max_examples=40, deadline=None, derandomize=True)
F64 = torch.float64
INF = math.inf


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def close(a, b, atol=1e-10, rtol=1e-10):
    torch.testing.assert_close(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), atol=atol, rtol=rtol)


def finite(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def batches(draw, lo=-5.0, hi=5.0, max_b=4, max_t=6):
    """(values [B,T] float64, mask [B,T] float 0/1) with empty rows allowed."""
    b, tt = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    x = draw(hnp.arrays(np.float64, (b, tt), elements=finite(lo, hi)))
    m = draw(hnp.arrays(np.bool_, (b, tt)))
    return torch.from_numpy(x), torch.from_numpy(m).to(F64)


def test_registries_hold_exactly_the_contracted_names():
    assert ADVANTAGES.names() == ["grpo", "rloo", "dr_grpo", "reinforce", "raw", "grpo_passk", "pass_at_k",
                                  "reinforce_pp", "reinforce_pp_baseline", "gpg"]
    assert POLICY_LOSSES.names() == ["vanilla", "ppo_clip", "dual_clip", "seq_ratio", "cispo", "sapo", "gmpo",
                                     "dppo_tv", "dppo_kl", "dro", "clip_cov", "kl_cov", "vespo", "ppo_clip_opsm"]
    assert AGGREGATIONS.names() == ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3", "exact"]
    assert CORRECTIONS.names() == ["none", "tis", "tis_two_sided", "icepop", "masked_seq_is", "geo_rs", "seq_tis"]
    for reg in (ADVANTAGES, POLICY_LOSSES, AGGREGATIONS, KL_ESTIMATORS, CORRECTIONS):
        for name in reg:
            assert len(reg.get(name).__doc__ or "") > 40, f"{reg.kind} {name!r} needs a docstring with its formula"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="known: token-mean, seq-mean-token-mean"):
        AGGREGATIONS.get("seq-mean")
    with pytest.raises(UnknownNameError, match="unknown loss aggregation 'sum'"):
        token_weights("sum", torch.ones(1, 1), 1.0)


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def test_grpo_binary_group_is_sqrt3_and_minus_inv_sqrt3():
    # r = [1,0,0,0]: p = 1/4, mean = 0.25, population std = sqrt(p(1-p)) = sqrt(3)/4 = 0.4330
    # A = (1 - 0.25)/0.4330 = sqrt(3) = 1.7321 ;  (0 - 0.25)/0.4330 = -1/sqrt(3) = -0.5774   (up to the 1e-6 eps)
    adv = ADVANTAGES.get("grpo")(t([[1.0, 0.0, 0.0, 0.0]]))
    s3 = math.sqrt(3)
    close(adv, [[s3, -1 / s3, -1 / s3, -1 / s3]], atol=1e-5, rtol=0)


def test_grpo_non_binary_group_matches_numpy_population_std():
    # r = [1,2,3,6]: mean 3, deviations [-2,-1,0,3], var = (4+1+0+9)/4 = 3.5, std = 1.870829
    # A = [-1.069045, -0.534522, 0, 1.603567]
    adv = ADVANTAGES.get("grpo")(t([[1.0, 2.0, 3.0, 6.0]]))
    close(adv, [[-2 / math.sqrt(3.5), -1 / math.sqrt(3.5), 0.0, 3 / math.sqrt(3.5)]], atol=1e-5, rtol=0)
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5, 7))
    ref = (r - r.mean(1, keepdims=True)) / (np.std(r, axis=1, ddof=0, keepdims=True) + 1e-6)
    close(ADVANTAGES.get("grpo")(torch.from_numpy(r)), ref)


def test_grpo_is_trl_verl_unbiased_std_times_sqrt_g_over_g_minus_1():
    # TRL / verl divide by the unbiased std (ddof=1); ours = theirs * sqrt(G/(G-1)) (eps aside).
    rng = np.random.default_rng(1)
    r = rng.normal(size=(3, 8))
    theirs = (r - r.mean(1, keepdims=True)) / np.std(r, axis=1, ddof=1, keepdims=True)
    close(ADVANTAGES.get("grpo")(torch.from_numpy(r)), theirs * math.sqrt(8 / 7), atol=1e-5, rtol=0)


def test_grpo_all_equal_rewards_give_zero_not_nan():
    # std = 0 -> (r - mean)/(0 + 1e-6) = 0/1e-6 = 0; 0.1 is not representable, so allow ~1e-11.
    adv = ADVANTAGES.get("grpo")(t([[1.0] * 4, [0.0] * 4, [0.1] * 4]))
    assert torch.isfinite(adv).all()
    close(adv, torch.zeros(3, 4), atol=1e-9, rtol=0)


@hyp
@given(r=hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 6)), elements=finite(-10, 10)),
       scale=finite(0.5, 100.0), shift=finite(-50, 50))
def test_grpo_is_invariant_to_positive_scaling_and_shifts(r, scale, shift):
    std = r.std(axis=1)
    assume(((std == 0) | (std >= 0.1)).all())
    r = torch.from_numpy(r)
    adv = ADVANTAGES.get("grpo")(r)
    # The eps moves A by at most sqrt(G-1) * 1e-6 / std <= 2.3e-5 for std >= 0.1: atol 1e-4.
    close(ADVANTAGES.get("grpo")(scale * r), adv, atol=1e-4, rtol=0)
    close(ADVANTAGES.get("grpo")(r + shift), adv, atol=1e-4, rtol=0)


def test_rloo_worked_example_and_group_of_one_raises():
    # r = [1,2,3,6], sum 12: A_i = r_i - (12 - r_i)/3
    #   1 - 11/3 = -8/3 ;  2 - 10/3 = -4/3 ;  3 - 9/3 = 0 ;  6 - 6/3 = 4        (sum: -8/3 - 4/3 + 4 = 0)
    close(ADVANTAGES.get("rloo")(t([[1.0, 2.0, 3.0, 6.0]])), [[-8 / 3, -4 / 3, 0.0, 4.0]])
    with pytest.raises(ConfigError, match="'rloo' needs at least 2 samples per prompt.*group size 1"):
        ADVANTAGES.get("rloo")(t([[1.0], [0.0]]))


@hyp
@given(r=hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 6)), elements=finite(-10, 10)),
       shift=finite(-50, 50))
def test_rloo_sums_to_zero_ignores_shifts_and_matches_explicit_leave_one_out(r, shift):
    G = r.shape[1]
    ref = np.stack([r[:, i] - np.delete(r, i, axis=1).mean(1) for i in range(G)], axis=1)
    adv = ADVANTAGES.get("rloo")(torch.from_numpy(r))
    close(adv, ref, atol=1e-9, rtol=1e-9)
    close(adv.sum(1), torch.zeros(r.shape[0]), atol=1e-9, rtol=0)
    close(ADVANTAGES.get("rloo")(torch.from_numpy(r + shift)), adv, atol=1e-8, rtol=0)
    # RLOO = G/(G-1) * Dr. GRPO
    close(adv, G / (G - 1) * ADVANTAGES.get("dr_grpo")(torch.from_numpy(r)), atol=1e-9, rtol=1e-9)


def test_dr_grpo_reinforce_raw_worked_examples():
    # dr_grpo, r = [1,2,3,6], mean 3: [-2,-1,0,3]
    close(ADVANTAGES.get("dr_grpo")(t([[1.0, 2.0, 3.0, 6.0]])), [[-2.0, -1.0, 0.0, 3.0]])
    # reinforce, batch mean over all 4 rewards = 1/4: [[1-.25, 0-.25], [-.25, -.25]]
    r = t([[1.0, 0.0], [0.0, 0.0]])
    close(ADVANTAGES.get("reinforce")(r), [[0.75, -0.25], [-0.25, -0.25]])
    # raw: the rewards themselves, as a copy (writing to it leaves the rewards alone)
    a = ADVANTAGES.get("raw")(r)
    close(a, r)
    a[0, 0] = 9.0
    assert r[0, 0] == 1.0


def test_advantages_accept_int_rewards_and_refuse_non_2d():
    close(ADVANTAGES.get("dr_grpo")(torch.tensor([[1, 0]])), [[0.5, -0.5]])
    for name in ADVANTAGES:
        with pytest.raises(ValueError, match=r"\[N prompts, G samples\]"):
            ADVANTAGES.get(name)(t([1.0, 0.0]))


# ---------------------------------------------------------------------------------------------
# Policy losses
# ---------------------------------------------------------------------------------------------

P = PolicyLossParams()


def loss_and_grad(name, log_r, adv, p=P, mask=None):
    """Per-token loss and d loss_t / d logp_t at logp = log_r + old_logp, old_logp = -1 (arbitrary)."""
    log_r, adv = t(log_r), t(adv)
    mask = torch.ones_like(log_r) if mask is None else t(mask)
    old = torch.full_like(log_r, -1.0)
    logp = (old + log_r).requires_grad_()
    loss = POLICY_LOSSES.get(name)(logp, old, adv, mask, p)
    (g,) = torch.autograd.grad((loss * mask).sum(), logp)
    return loss.detach(), g


def test_vanilla_is_minus_adv_logp():
    # logp = [-1, -2], A = [2, -1]: loss = [-2*-1, -(-1)*-2] = [2, -2], d/dlogp = -A = [-2, 1]
    logp = t([-1.0, -2.0]).requires_grad_()
    loss = POLICY_LOSSES.get("vanilla")(logp, t([5.0, 5.0]), t([2.0, -1.0]), torch.ones(2, dtype=F64), P)
    (g,) = torch.autograd.grad(loss.sum(), logp)
    close(loss, [2.0, -2.0])
    close(g, [-2.0, 1.0])


def test_ppo_clip_four_quadrants():
    # eps = 0.2, clip range [0.8, 1.2]; loss = -min(rA, clip(r)A); grad = -A r if the unclipped term is chosen
    #   A=+1 r=1.5: -min(1.5, 1.2)  = -1.2 clipped  -> grad 0
    #   A=+1 r=0.5: -min(0.5, 0.8)  = -0.5          -> grad -A r = -0.5
    #   A=-1 r=1.5: -min(-1.5,-1.2) =  1.5          -> grad -A r = 1.5
    #   A=-1 r=0.5: -min(-0.5,-0.8) =  0.8 clipped  -> grad 0
    lr = [math.log(1.5), math.log(0.5), math.log(1.5), math.log(0.5)]
    loss, g = loss_and_grad("ppo_clip", lr, [1.0, 1.0, -1.0, -1.0])
    close(loss, [-1.2, -0.5, 1.5, 0.8])
    close(g, [0.0, -0.5, 1.5, 0.0])


def test_ppo_clip_higher_lets_a_positive_advantage_push_further():
    # DAPO eps_high = 0.28, A = 1, r = 1.25: symmetric 0.2 clips to -1.2; clip-higher keeps -1.25 (grad -1.25)
    lr = [math.log(1.25)]
    close(loss_and_grad("ppo_clip", lr, [1.0])[0], [-1.2])
    loss, g = loss_and_grad("ppo_clip", lr, [1.0], PolicyLossParams(eps_low=0.2, eps_high=0.28))
    close(loss, [-1.25])
    close(g, [-1.25])


def test_dual_clip_caps_negative_advantage_loss_at_c_abs_a():
    # c = 3, eps = 0.2:
    #   A=-1   r=5:  ppo = -min(-5, -1.2) = 5    -> min(5, 3*1)   = 3    grad 0
    #   A=-1   r=2:  ppo = -min(-2, -1.2) = 2    -> min(2, 3)     = 2    grad -A r = 2
    #   A=-0.5 r=10: ppo = 5                     -> min(5, 1.5)   = 1.5  grad 0
    #   A=+2   r=5:  ppo = -min(10, 2.4) = -2.4  -> A >= 0 unchanged     grad 0 (clipped)
    lr = [math.log(5.0), math.log(2.0), math.log(10.0), math.log(5.0)]
    loss, g = loss_and_grad("dual_clip", lr, [-1.0, -1.0, -0.5, 2.0])
    close(loss, [3.0, 2.0, 1.5, -2.4])
    close(g, [0.0, 2.0, 0.0, 0.0])
    ppo = loss_and_grad("ppo_clip", lr, [-1.0, -1.0, -0.5, 2.0])[0]
    close(ppo, [5.0, 2.0, 5.0, -2.4])


@hyp
@given(log_r=hnp.arrays(np.float64, 6, elements=finite(-3, 3)), adv=hnp.arrays(np.float64, 6, elements=finite(-5, 5)),
       eps_low=finite(0, 0.9), eps_high=finite(0, 2), c=finite(1.01, 10))
def test_ppo_and_dual_clip_match_the_objective_form_in_numpy(log_r, adv, eps_low, eps_high, c):
    p = PolicyLossParams(eps_low, eps_high, c)
    r = np.exp(log_r)
    objective = np.minimum(r * adv, np.clip(r, 1 - eps_low, 1 + eps_high) * adv)  # Schulman eq. 7
    dual = np.where(adv < 0, np.maximum(objective, c * adv), objective)  # Ye et al. eq. 5
    close(loss_and_grad("ppo_clip", log_r, adv, p)[0], -objective)
    close(loss_and_grad("dual_clip", log_r, adv, p)[0], -dual)


def test_seq_ratio_worked_example_clips_the_whole_sequence():
    # row: logp - old = [0.1, 0.3, 7 (masked)]: s = exp((0.1 + 0.3)/2) = exp(0.2) = 1.221403, A = 1
    #   eps_high = 0.2: clip(s) = 1.2 < s -> loss_t = -1.2 on every token, grad 0
    #   eps_high = 0.3: unclipped      -> loss_t = -1.221403, grad_t = -s A = -1.221403 (masked token: 0 via mask)
    s = math.exp(0.2)
    loss, g = loss_and_grad("seq_ratio", [[0.1, 0.3, 7.0]], [[1.0, 1.0, 1.0]], mask=[[1.0, 1.0, 0.0]])
    close(loss[0, :2], [-1.2, -1.2])
    close(g, [[0.0, 0.0, 0.0]])
    loss, g = loss_and_grad("seq_ratio", [[0.1, 0.3, 7.0]], [[1.0, 1.0, 1.0]], PolicyLossParams(eps_high=0.3),
                            mask=[[1.0, 1.0, 0.0]])
    close(loss[0, :2], [-s, -s])
    close(g, [[-s, -s, 0.0]])


@hyp
@given(data=batches(lo=-0.05, hi=0.05), adv_row=hnp.arrays(np.float64, 4, elements=finite(-3, 3)))
def test_seq_ratio_gradient_equals_gspo_eq10_under_seq_mean_token_mean(data, adv_row):
    # GSPO (eq. 5, 7) written directly: J = 1/B sum_b s_b(theta) A_b, s_b = exp(mean_t (logp - old)), gradient
    # flowing through the mean. Unclipped regime (|log s_b| <= 0.05 < log 1.2), A constant per sequence.
    log_r, mask = data
    B, T = log_r.shape
    adv = torch.from_numpy(adv_row[:B]).unsqueeze(-1).expand(B, T)
    old = torch.full_like(log_r, -2.0)
    logp = (old + log_r).requires_grad_()
    agg = AGGREGATIONS.get("seq-mean-token-mean")
    (g_ours,) = torch.autograd.grad(agg(POLICY_LOSSES.get("seq_ratio")(logp, old, adv, mask, P), mask, 0.0), logp)
    n = mask.sum(-1)
    s_b = torch.exp(((logp - old) * mask).sum(-1) / n.clamp(min=1))
    (g_ref,) = torch.autograd.grad(-(s_b * adv[:, 0] * (n > 0)).mean(), logp)
    close(g_ours, g_ref, atol=1e-12, rtol=1e-9)


@hyp
@given(data=batches(lo=-20, hi=0), adv=hnp.arrays(np.float64, (4, 6), elements=finite(-5, 5)),
       eps_low=finite(0, 0.9), eps_high=finite(0, 2), c=finite(1.01, 10))
def test_ratio_losses_have_the_vanilla_gradient_on_policy(data, adv, eps_low, eps_high, c):
    # logp == old_logp exactly: r = s = 1 sits inside every clip range, so d loss_t / d logp_t = -A_t.
    logp0, mask = data
    adv = torch.from_numpy(adv[: logp0.shape[0], : logp0.shape[1]])
    p = PolicyLossParams(eps_low, eps_high, c)

    def grad(name):
        logp = logp0.clone().requires_grad_()
        return torch.autograd.grad(POLICY_LOSSES.get(name)(logp, logp0.clone(), adv, mask, p).sum(), logp)[0]

    vanilla = grad("vanilla")
    close(vanilla, -adv)
    for name in ("ppo_clip", "dual_clip", "seq_ratio", "cispo", "sapo", "dppo_tv", "dppo_kl", "dro", "kl_cov",
                 "vespo", "ppo_clip_opsm"):
        close(grad(name), vanilla, atol=1e-12, rtol=0)


def test_policy_loss_params_refuse_out_of_domain_values():
    for bad in (dict(eps_low=1.0), dict(eps_low=-0.1), dict(eps_high=-0.1), dict(dual_clip_c=1.0)):
        with pytest.raises(ValueError):
            PolicyLossParams(**bad)


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------

L = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_aggregations_worked_example():
    # l = [[1,2,3],[4,5,6]], m = [[1,1,0],[1,0,0]], B = 2, norm_const = 4
    # token-mean:              (1+2+4)/3               = 7/3
    # seq-mean-token-mean:     ((1+2)/2 + 4/1)/2       = (1.5+4)/2 = 2.75
    # seq-mean-token-sum:      ((1+2) + 4)/2           = 3.5
    # seq-mean-token-sum-norm: (1+2+4)/(2*4)           = 0.875
    expect = {"token-mean": 7 / 3, "seq-mean-token-mean": 2.75, "seq-mean-token-sum": 3.5, "seq-mean-token-sum-norm": 0.875}
    for name, value in expect.items():
        close(AGGREGATIONS.get(name)(L, M, 4.0), value)


def test_token_weights_worked_example():
    # token-mean: m/3; seq-mean-token-mean: row 0 -> 1/(2*2) = 1/4, row 1 -> 1/(2*1) = 1/2;
    # seq-mean-token-sum: m/2; seq-mean-token-sum-norm: m/(2*4) = m/8
    close(token_weights("token-mean", M, 4.0), M / 3)
    close(token_weights("seq-mean-token-mean", M, 4.0), [[0.25, 0.25, 0.0], [0.5, 0.0, 0.0]])
    close(token_weights("seq-mean-token-sum", M, 4.0), M / 2)
    close(token_weights("seq-mean-token-sum-norm", M, 4.0), M / 8)


def test_aggregations_ignore_garbage_at_masked_positions_and_empty_masks_give_zero():
    dirty = L.clone()
    dirty[0, 2], dirty[1, 1], dirty[1, 2] = math.nan, INF, -INF
    empty_row = t([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    for name in AGGREGATIONS:
        close(AGGREGATIONS.get(name)(dirty, M, 4.0), AGGREGATIONS.get(name)(L, M, 4.0))
        for mask in (torch.zeros_like(M), empty_row):
            assert torch.isfinite(AGGREGATIONS.get(name)(dirty, mask, 4.0))
            assert torch.isfinite(token_weights(name, mask, 4.0)).all()
        close(AGGREGATIONS.get(name)(L, torch.zeros_like(M), 4.0), 0.0)
        close(token_weights(name, torch.zeros_like(M), 4.0), torch.zeros_like(M))
    # empty_rows="count" (default, TRL): the empty row counts in B = 2: ((1+2)/2 + 0)/2 = 0.75;
    # "skip" (verl): B' = 1 non-empty row: (1+2)/2 = 1.5
    close(AGGREGATIONS.get("seq-mean-token-mean")(L, empty_row, 0.0), 0.75)
    close(AGGREGATIONS.get("seq-mean-token-mean")(L, empty_row, 0.0, empty_rows="skip"), 1.5)
    # seq-mean-token-sum: count -> (1+2)/2 = 1.5, skip -> 3; sum-norm (c = 4): count 3/(2*4), skip 3/4
    close(AGGREGATIONS.get("seq-mean-token-sum")(L, empty_row, 0.0), 1.5)
    close(AGGREGATIONS.get("seq-mean-token-sum")(L, empty_row, 0.0, empty_rows="skip"), 3.0)
    close(AGGREGATIONS.get("seq-mean-token-sum-norm")(L, empty_row, 4.0), 3 / 8)
    close(AGGREGATIONS.get("seq-mean-token-sum-norm")(L, empty_row, 4.0, empty_rows="skip"), 3 / 4)


@hyp
@given(data=batches(), norm_const=finite(0.5, 64), name=st.sampled_from(AGGREGATIONS.names()))
def test_token_weights_equal_autograd_of_the_aggregation(data, norm_const, name):
    per_token, mask = data
    per_token.requires_grad_()
    value = AGGREGATIONS.get(name)(per_token, mask, norm_const)
    (g,) = torch.autograd.grad(value, per_token)
    w = token_weights(name, mask, norm_const)
    close(w, g, atol=1e-12, rtol=1e-12)
    close(value, (w * per_token).sum(), atol=1e-9, rtol=1e-12)  # linear in the per-token loss


def test_sum_norm_refuses_a_non_positive_constant():
    with pytest.raises(ValueError, match="norm_const > 0"):
        AGGREGATIONS.get("seq-mean-token-sum-norm")(L, M, 0.0)
    with pytest.raises(ValueError, match="norm_const > 0"):
        token_weights("seq-mean-token-sum-norm", M, -1.0)


# ---------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------


def kl(name, logp, ref, full=None, full_ref=None):
    return KL_ESTIMATORS.get(name)(logp, ref, full, full_ref)


def test_k1_k2_k3_worked_example():
    # pi(a) = 0.5, pi_ref(a) = 0.25: log ratio = log 2 = 0.693147
    #   k1 = 0.693147;  k2 = 0.5 * 0.693147^2 = 0.240227;  k3 = rho - 1 - log rho, rho = 0.25/0.5 = 0.5:
    #   0.5 - 1 + 0.693147 = 0.193147
    lp, rl = t([math.log(0.5)]), t([math.log(0.25)])
    l2 = math.log(2)
    close(kl("k1", lp, rl), [l2])
    close(kl("k2", lp, rl), [0.5 * l2**2])
    close(kl("k3", lp, rl), [-0.5 + l2])


def test_k3_is_not_clamped_and_is_accurate_for_tiny_differences():
    # d = ref - logp = 20: k3 = e^20 - 21 = 485165174.4 (verl would clamp to 10)
    close(kl("k3", t([0.0]), t([20.0])), [math.exp(20) - 21])
    # d = 1e-8: k3 = d^2/2 + d^3/6 + ... = 5e-17 (the naive exp(d) - d - 1 gives 0 or noise here)
    close(kl("k3", t([0.0]), t([1e-8])), [5e-17 + 1e-24 / 6], atol=0, rtol=1e-6)


def random_dists(v=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(v, generator=g, dtype=F64), -1), torch.log_softmax(torch.randn(v, generator=g, dtype=F64), -1)


@pytest.mark.parametrize("seed", range(4))
def test_exact_kl_matches_scipy_and_enumeration_of_k1_k3(seed):
    lp, rl = random_dists(seed=seed)
    p, q = lp.exp().numpy(), rl.exp().numpy()
    truth = scipy.stats.entropy(p, q)  # sum p log(p/q), independent reference
    value = kl("exact", lp[:1], rl[:1], lp.view(1, -1), rl.view(1, -1))
    close(value, [truth], atol=1e-12, rtol=1e-12)
    close(value, [torch.distributions.kl_divergence(torch.distributions.Categorical(logits=lp),
                                                     torch.distributions.Categorical(logits=rl))])
    # E_{a~pi}[k] by enumeration over the vocabulary: k1 and k3 are unbiased, k2 is not (and >= 0)
    for name in ("k1", "k3"):
        close((lp.exp() * kl(name, lp, rl)).sum(), truth, atol=1e-12, rtol=1e-10)


def test_exact_kl_one_hot_policy_has_no_nan_in_value_or_gradient():
    # pi = one-hot on v0 (log pi = [0, -inf, -inf]), pi_ref = [0.5, 0.25, 0.25]:
    #   KL = 1*(0 - log 0.5) + 0*(...) + 0*(...) = log 2, with 0 log 0 = 0
    full = t([[[0.0, -INF, -INF]]]).requires_grad_()
    full_ref = t([[[math.log(0.5), math.log(0.25), math.log(0.25)]]])
    value = kl("exact", full[..., 0], full_ref[..., 0], full, full_ref)
    close(value, [[math.log(2)]])
    (g,) = torch.autograd.grad(value.sum(), full)
    assert torch.isfinite(g).all()
    # both one-hot on the same token: KL = 0; pi puts mass where pi_ref has none: KL = +inf (the true value)
    close(kl("exact", None, None, full.detach(), full.detach()), [[0.0]])
    assert kl("exact", None, None, t([[[math.log(0.5)] * 2]]), t([[[0.0, -INF]]])).item() == INF


def test_exact_kl_names_what_is_missing():
    with pytest.raises(ValueError, match="missing: full_ref_logp"):
        kl("exact", t([0.0]), t([0.0]), t([[0.0]]), None)
    with pytest.raises(ValueError, match="missing: full_logp, full_ref_logp"):
        kl("exact", t([0.0]), t([0.0]))


@hyp
@given(logp=hnp.arrays(np.float64, 8, elements=finite(-60, 0)), ref=hnp.arrays(np.float64, 8, elements=finite(-60, 0)))
def test_k2_k3_are_non_negative_and_zero_only_on_agreement(logp, ref):
    logp, ref = torch.from_numpy(logp), torch.from_numpy(ref)
    for name in ("k2", "k3"):
        value = kl(name, logp, ref)
        assert (value >= 0).all()
        assert ((value == 0) <= ((logp - ref).abs() < 1e-7)).all()  # only (near-)equal logs give exactly 0


# ---------------------------------------------------------------------------------------------
# Off-policy corrections
# ---------------------------------------------------------------------------------------------


def weights(name, ratios, mask=None, p=CorrectionParams()):
    lr = torch.log(t(ratios))
    mask = torch.ones_like(lr) if mask is None else t(mask)
    return CORRECTIONS.get(name)(lr, mask, p), touched(name, lr, mask, p)


def test_none_is_ones_and_touches_nothing():
    w, hit = weights("none", [[0.25, 1.0, 9.0]])
    close(w, [[1.0, 1.0, 1.0]])
    assert not hit.any()


def test_tis_truncates_at_the_cap():
    # ratios [0.25, 1.5, 4.0], C = 2: min(r, 2) = [0.25, 1.5, 2.0]; only the 4.0 is touched
    # (the same oracle as SkyRL's skyrl_train correction preset test)
    w, hit = weights("tis", [[0.25, 1.5, 4.0]])
    close(w, [[0.25, 1.5, 2.0]])
    assert hit.tolist() == [[False, False, True]]


def test_icepop_keeps_the_ratio_inside_alpha_beta_and_drops_the_rest():
    # Ring-1T's alpha = 0.5, beta = 5 (bounds inclusive): M(k) = k on [0.5, 5], else 0
    #   [0.25, 0.5, 1.5, 5.0, 8.0] -> [0, 0.5, 1.5, 5.0, 0]; touched: the 0.25 and the 8.0
    p = CorrectionParams(icepop_low=0.5, icepop_high=5.0)
    w, hit = weights("icepop", [[0.25, 0.5, 1.5, 5.0, 8.0]], p=p)
    close(w, [[0.0, 0.5, 1.5, 5.0, 0.0]])
    assert hit.tolist() == [[True, False, False, False, True]]


def test_masked_seq_is_rejects_whole_sequences_on_the_geometric_mean():
    # row 0: ratios [2, 0.5, (masked 100)]: rho = exp((log 2 + log 0.5)/2) = 1 in [0.5, 2] -> keep [2, 0.5]
    # row 1: ratios [4, 2, (masked 1e-3)]:  rho = sqrt(4*2) = 2.828 > 2                     -> all 0
    # row 2: no tokens: rho = 1 -> kept (its weights never enter the loss)
    w, hit = weights("masked_seq_is", [[2.0, 0.5, 100.0], [4.0, 2.0, 1e-3], [3.0, 3.0, 3.0]],
                     mask=[[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    close(w, [[2.0, 0.5, 100.0], [0.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    assert hit.tolist() == [[False, False, False], [True, True, False], [False, False, False]]


def test_corrections_carry_no_gradient_and_params_refuse_bad_ranges():
    lr = t([[0.1, -0.2]]).requires_grad_()
    for name in CORRECTIONS:
        assert not CORRECTIONS.get(name)(lr, torch.ones_like(lr), CorrectionParams()).requires_grad
    for bad in (dict(tis_cap=0.0), dict(icepop_low=3.0), dict(seq_low=-1.0)):
        with pytest.raises(ValueError):
            CorrectionParams(**bad)


@hyp
@given(data=batches(lo=-4, hi=4), cap=finite(0.1, 5), low=finite(0, 1), high=finite(1, 5))
def test_correction_invariants(data, cap, low, high):
    lr, mask = data
    p = CorrectionParams(tis_cap=cap, icepop_low=low, icepop_high=high, seq_low=low, seq_high=high)
    ratio = lr.exp()
    w = CORRECTIONS.get("tis")(lr, mask, p)
    assert (w <= cap).all() and (w <= ratio).all()
    assert torch.equal(touched("tis", lr, mask, p), (ratio > cap) & (mask > 0))
    for name in ("icepop", "masked_seq_is"):
        w = CORRECTIONS.get(name)(lr, mask, p)
        assert ((w == 0) | (w == ratio)).all()  # masking never rescales a kept token
        assert torch.equal(touched(name, lr, mask, p), (w == 0) & (mask > 0))
    w = CORRECTIONS.get("icepop")(lr, mask, p)
    assert ((w == 0) | ((w >= low * (1 - 1e-12)) & (w <= high * (1 + 1e-12)))).all()
    # masked_seq_is: one decision per row
    kept = CORRECTIONS.get("masked_seq_is")(lr, mask, p) > 0
    assert (kept.all(-1) | (~kept).all(-1)).all()


# ---------------------------------------------------------------------------------------------
# Log-probabilities and entropy
# ---------------------------------------------------------------------------------------------


def test_gather_logprobs_worked_example_and_reference():
    # logits [0, log 3]: softmax = [1/4, 3/4]; id 1 -> log 0.75 = -0.287682, id 0 -> log 0.25
    logits = t([[[0.0, math.log(3)], [0.0, math.log(3)]]])
    close(gather_logprobs(logits, torch.tensor([[1, 0]])), [[math.log(0.75), math.log(0.25)]])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=g, dtype=F64)
    ids = torch.randint(0, 7, (2, 3), generator=g)
    close(gather_logprobs(logits, ids), torch.distributions.Categorical(logits=logits).log_prob(ids))


def test_gather_logprobs_keeps_the_logits_dtype():
    logits = torch.randn(1, 2, 5).to(torch.bfloat16)
    out = gather_logprobs(logits, torch.tensor([[0, 4]]))
    assert out.dtype == torch.bfloat16
    expect = torch.log_softmax(logits, -1)[0, [0, 1], [0, 4]]  # bf16 all the way, no float32 detour
    assert torch.equal(out[0], expect)


def test_entropy_uniform_one_hot_and_scipy_reference():
    # uniform over 4: H = log 4 = 1.386294;  [0, -inf, -inf]: one-hot, H = 0 with 0 log 0 = 0
    close(entropy_from_logits(t([0.0, 0.0, 0.0, 0.0])), math.log(4))
    one_hot = t([[0.0, -INF, -INF]]).requires_grad_()
    h = entropy_from_logits(one_hot)
    close(h, [0.0])
    (g,) = torch.autograd.grad(h.sum(), one_hot)
    assert torch.isfinite(g).all()
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    ref = scipy.stats.entropy(torch.softmax(logits, -1).numpy(), axis=-1)
    close(entropy_from_logits(logits), ref)


def test_entropy_gradient_matches_the_closed_form():
    # dH/dz_v = -p_v (log p_v + H)
    z = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=F64).requires_grad_()
    h = entropy_from_logits(z)
    (g,) = torch.autograd.grad(h, z)
    p = torch.softmax(z.detach(), -1)
    close(g, -p * (torch.log(p) + h.detach()))


# ---------------------------------------------------------------------------------------------
# Peer entries (issue 19): advantages
# ---------------------------------------------------------------------------------------------

import itertools  # noqa: E402

from solidrl.trainer.algos import GROUP_ESTIMATORS, check_group_size, clip_cov_selected, kl_cov_selected  # noqa: E402


@pytest.mark.parametrize("name", sorted(GROUP_ESTIMATORS))
def test_group_estimators_refuse_a_group_of_one_with_one_line(name):
    with pytest.raises(ConfigError, match=rf"^advantage estimator '{name}' needs at least 2 samples per prompt.*group size 1;"):
        ADVANTAGES.get(name)(t([[1.0], [0.0]]))
    with pytest.raises(ConfigError) as e:
        check_group_size(name, 1)
    assert "\n" not in str(e.value)
    check_group_size(name, 2)  # fine
    check_group_size("reinforce", 1)  # batch baselines accept G = 1


def _passk_by_enumeration(r, k):
    """m_i = mean over k-subsets S containing i of max_S r; rho, E[max^2] over all k-subsets (itertools)."""
    G = len(r)
    subsets = list(itertools.combinations(range(G), k))
    mx = {S: max(r[j] for j in S) for S in subsets}
    rho = np.mean([mx[S] for S in subsets])
    m2 = np.mean([mx[S] ** 2 for S in subsets])
    m = np.array([np.mean([mx[S] for S in subsets if i in S]) for i in range(G)])
    return m, rho, m2


@hyp
@given(r=hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(2, 6)), elements=st.sampled_from([0.0, 0.25, 1.0, 2.0, -1.0])),
       k=st.integers(1, 6), normalize=st.booleans())
def test_pass_at_k_matches_exhaustive_subset_enumeration(r, k, normalize):
    assume(k <= r.shape[1])
    adv = ADVANTAGES.get("pass_at_k")(torch.from_numpy(r), k=k, normalize=normalize)
    for n in range(r.shape[0]):
        m, rho, m2 = _passk_by_enumeration(list(r[n]), k)
        want = m - rho
        if normalize:
            want = want / (math.sqrt(max(m2 - rho**2, 0.0)) + 1e-6)
        if np.all(r[n] == r[n][0]):
            want = np.zeros_like(want)
        close(adv[n], want, atol=1e-9, rtol=1e-9)
    close(adv.sum(1), torch.zeros(r.shape[0]), atol=1e-8, rtol=0)


def test_pass_at_k_binary_closed_form_of_chen_et_al_and_k1_is_grpo():
    # G = 5, c = 2 correct, k = 3: rho = 1 - C(3,3)/C(5,3) = 1 - 1/10 = 0.9, sigma = sqrt(0.9 * 0.1) = 0.3
    #   A+ = (1 - 0.9)/0.3 = 1/3;  A- = (1 - 0.9 - C(2,2)/C(4,2))/0.3 = (0.1 - 1/6)/0.3 = -2/9
    adv = ADVANTAGES.get("pass_at_k")(t([[1.0, 0.0, 0.0, 1.0, 0.0]]), k=3)
    close(adv, [[1 / 3, -2 / 9, -2 / 9, 1 / 3, -2 / 9]], atol=1e-5, rtol=0)
    r = torch.from_numpy(np.random.default_rng(3).normal(size=(4, 6)))
    close(ADVANTAGES.get("pass_at_k")(r, k=1), ADVANTAGES.get("grpo")(r), atol=1e-12, rtol=1e-12)
    with pytest.raises(ConfigError, match="1 <= k <= group size"):
        ADVANTAGES.get("pass_at_k")(r, k=7)


def test_grpo_passk_credits_only_the_best_sample():
    # r = [0.2, 0.9, 0.5, 0.5]: gap = 0.9 - 0.5 = 0.4 at index 1; unbiased std = std(ddof=1)
    r = np.array([[0.2, 0.9, 0.5, 0.5], [1.0, 1.0, 0.0, 0.0]])
    adv = ADVANTAGES.get("grpo_passk")(torch.from_numpy(r))
    close(adv[0], [0.0, 0.4 / (np.std(r[0], ddof=1) + 1e-6), 0.0, 0.0])
    close(adv[1], [0.0] * 4)  # two at the top: r_max - r_second = 0
    close(ADVANTAGES.get("grpo_passk")(torch.from_numpy(r), norm_by_std=False)[0], [0.0, 0.4, 0.0, 0.0])


def test_grpo_parameters_reproduce_the_peer_normalizers():
    r = np.random.default_rng(4).normal(size=(3, 5))
    rt = torch.from_numpy(r)
    dev = r - r.mean(1, keepdims=True)
    close(ADVANTAGES.get("grpo")(rt, unbiased_std=True), dev / (r.std(1, ddof=1, keepdims=True) + 1e-6))  # verl
    close(ADVANTAGES.get("grpo")(rt, unbiased_std=True, eps=1e-4), dev / (r.std(1, ddof=1, keepdims=True) + 1e-4))  # TRL
    close(ADVANTAGES.get("grpo")(rt, unbiased_std=True, eps=1e-4, scale="batch"), dev / (r.std(ddof=1) + 1e-4))
    with pytest.raises(ConfigError, match="scale must be"):
        ADVANTAGES.get("grpo")(rt, scale="prompt")


def test_reinforce_pp_whitens_over_the_batch_and_gpg_rescales():
    r = np.random.default_rng(5).normal(size=(3, 4))
    close(ADVANTAGES.get("reinforce_pp")(torch.from_numpy(r)), (r - r.mean()) / np.sqrt(r.var(ddof=1) + 1e-8))
    c = r - r.mean(1, keepdims=True)
    close(ADVANTAGES.get("reinforce_pp_baseline")(torch.from_numpy(r)), (c - c.mean()) / np.sqrt(c.var(ddof=1) + 1e-8))
    # gpg: r = [[1,0],[0,0]]: one non-zero reward of 4 -> alpha = 4; A = 4 (r - mean_g) / f_norm
    close(ADVANTAGES.get("gpg")(t([[1.0, 0.0], [0.0, 0.0]])), [[2.0, -2.0], [0.0, 0.0]])
    close(ADVANTAGES.get("gpg")(t([[1.0, 0.0], [0.0, 0.0]]), f_norm=2.0), [[1.0, -1.0], [0.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# Peer entries: policy losses
# ---------------------------------------------------------------------------------------------


def grad_of(name, log_r, adv, mask=None, p=P, old=-1.0, **kw):
    log_r, adv = t(log_r), t(adv)
    mask = torch.ones_like(log_r) if mask is None else t(mask)
    oldt = torch.full_like(log_r, old)
    logp = (oldt + log_r).requires_grad_()
    loss = POLICY_LOSSES.get(name)(logp, oldt, adv, mask, p, **kw)
    (g,) = torch.autograd.grad((loss * mask).sum(), logp)
    return loss.detach(), g


def test_cispo_keeps_a_clipped_weight_on_every_token():
    # r = [1.5, 0.5, 1.1], A = [1, -1, 2]; two_sided [0.8, 1.2]: w = [1.2, 0.8, 1.1]; grad = -w A
    # upper (min(r, 1.2)): w = [1.2, 0.5, 1.1]
    lr = np.log([1.5, 0.5, 1.1])
    _, g = grad_of("cispo", lr, [1.0, -1.0, 2.0])
    close(g, [-1.2, 0.8, -2.2])
    _, g = grad_of("cispo", lr, [1.0, -1.0, 2.0], bounds="upper")
    close(g, [-1.2, 0.5, -2.2])
    with pytest.raises(ConfigError, match="cispo bounds"):
        grad_of("cispo", lr, [1.0, -1.0, 2.0], bounds="trl")


@hyp
@given(log_r=hnp.arrays(np.float64, 6, elements=finite(-3, 3)), adv=hnp.arrays(np.float64, 6, elements=finite(-5, 5)),
       tp=finite(0.1, 5), tn=finite(0.1, 5))
def test_sapo_is_the_soft_gate_and_its_gradient(log_r, adv, tp, tn):
    import scipy.special
    r = np.exp(log_r)
    tau = np.where(adv > 0, tp, tn)
    loss, g = grad_of("sapo", log_r, adv, tau_pos=tp, tau_neg=tn)
    close(loss, -(4 / tau) * scipy.special.expit(tau * (r - 1)) * adv)
    s = scipy.special.expit(tau * (r - 1))
    close(g, -4 * s * (1 - s) * r * adv)  # d/dlogp of (4/tau) sigmoid(tau (r - 1)) = 4 s (1 - s) r


@hyp
@given(data=batches(lo=-1, hi=1), adv_row=hnp.arrays(np.float64, 4, elements=finite(-3, 3)), eps=finite(0.05, 0.8))
def test_gmpo_aggregate_equals_the_geometric_mean_objective(data, adv_row, eps):
    # Zhao et al. eq. 5-7 written directly: J = 1/B sum_b A_b prod_t (clip_sgn(r_t))^(1/n_b), gradient by autograd
    lr0, mask = data
    B, T = lr0.shape
    adv = torch.from_numpy(adv_row[:B]).unsqueeze(-1).expand(B, T)
    p = PolicyLossParams(eps_low=eps, eps_high=eps)
    old = torch.full_like(lr0, -2.0)
    logp = (old + lr0).requires_grad_()
    agg = AGGREGATIONS.get("seq-mean-token-mean")
    (g_ours,) = torch.autograd.grad(agg(POLICY_LOSSES.get("gmpo")(logp, old, adv, mask, p), mask, 0.0), logp)
    lr = logp - old
    a = adv[:, 0]
    lo, hi = -eps, eps
    clipped = torch.where(a[:, None] > 0, torch.minimum(lr, torch.full_like(lr, hi)),
                          torch.where(a[:, None] < 0, torch.maximum(lr, torch.full_like(lr, lo)), lr * 0))
    n = mask.sum(-1)
    s = torch.exp((clipped * mask).sum(-1) / n.clamp(min=1))
    (g_ref,) = torch.autograd.grad(-(a * s * (n > 0)).mean(), logp)
    close(g_ours, g_ref, atol=1e-12, rtol=1e-9)


def test_dppo_masks_tokens_whose_probability_moved_too_far():
    # old p = [0.5, 0.5, 0.5, 0.5]; new p = [0.8, 0.6, 0.2, 0.45]; A = [1, 1, -1, -1]; eps = 0.2 (probability units)
    #   TV: p - p_old = [0.3, 0.1, -0.3, -0.05]: A>0 keeps <= 0.2 -> [0, 1]; A<0 keeps >= -0.2 -> [0, 1]
    #   grad = -A min(r, 20) v, r = p/p_old = [1.6, 1.2, 0.4, 0.9] -> [0, -1.2, 0, 0.9]
    old, new = np.log([0.5] * 4), np.log([0.8, 0.6, 0.2, 0.45])
    _, g = grad_of("dppo_tv", new - old, [1.0, 1.0, -1.0, -1.0], old=math.log(0.5))
    close(g, [0.0, -1.2, 0.0, 0.9])
    # KL: D = p_o log(p_o/p) + (1-p_o) log((1-p_o)/(1-p)) (ignoring the 1e-8): [0.223, 0.0204, 0.223, 0.00501]
    #   A>0: keep D <= 0.2 or p <= p_old -> [0, 1]; A<0: keep D <= 0.2 or p >= p_old -> [0, 1]
    _, g = grad_of("dppo_kl", new - old, [1.0, 1.0, -1.0, -1.0], old=math.log(0.5))
    close(g, [0.0, -1.2, 0.0, 0.9])
    # the KL mask lets a token move freely in the direction its advantage does not push: A>0 and p < p_old
    _, g = grad_of("dppo_kl", [math.log(0.2 / 0.5)], [1.0], old=math.log(0.5))
    close(g, [-0.4])
    _, g = grad_of("dppo_tv", [5.0], [-1.0], old=-8.0, trunc_c=3.0)  # r = e^5 truncated at 3; p - p_old > 0 -> valid
    close(g, [3.0])


def test_dro_gradient_is_minus_a_plus_beta_log_ratio():
    loss, g = grad_of("dro", [0.5, -0.2], [1.0, -2.0], beta=0.3)
    close(g, [-1.0 + 0.3 * 0.5, 2.0 + 0.3 * -0.2])
    close(loss, [-(-0.5 * 1.0 - 0.15 * 0.25), -(-1.2 * -2.0 - 0.15 * 0.04)])  # logp = old + lr = [-0.5, -1.2]


def test_clip_cov_cuts_candidates_only_and_kl_cov_penalizes_the_top_covariance():
    g = torch.Generator().manual_seed(1)
    B, T = 4, 50
    logp = -torch.rand(B, T, generator=g, dtype=F64) * 4
    old = logp + 0.05 * torch.randn(B, T, generator=g, dtype=F64)
    adv = 3 * torch.randn(B, 1, generator=g, dtype=F64).expand(B, T)
    mask = (torch.rand(B, T, generator=g) < 0.9).double()
    n_tok = int(mask.sum())
    cov = (adv - adv[mask > 0].mean()) * (logp - logp[mask > 0].mean())
    r = torch.exp(logp - old)
    ppo_clipped = (r.clamp(0.8, 1.2) * -adv > r * -adv)
    cand = (mask > 0) & ~ppo_clipped & (cov > 1) & (cov < 5)
    for ratio in (0.01, 0.2, 0.9):
        cut = clip_cov_selected(logp, old, adv, mask, P, ratio=ratio)
        assert (cut <= cand).all()
        assert int(cut.sum()) == min(max(int(ratio * n_tok), 1), int(cand.sum()))
        assert torch.equal(cut, clip_cov_selected(logp, old, adv, mask, P, ratio=ratio))  # deterministic
        lp = logp.clone().requires_grad_()
        loss = POLICY_LOSSES.get("clip_cov")(lp, old, adv, mask, P, ratio=ratio)
        (gr,) = torch.autograd.grad((loss * mask).sum(), lp)
        lp2 = logp.clone().requires_grad_()
        (gp,) = torch.autograd.grad((POLICY_LOSSES.get("ppo_clip")(lp2, old, adv, mask, P) * mask).sum(), lp2)
        close(gr, torch.where(cut, torch.zeros_like(gp), gp))
    # kl_cov: the k = floor(0.05 * n) largest covariances (by sort), loss -A r + coef |log r| there
    sel = kl_cov_selected(logp, adv, mask, ratio=0.05)
    k = max(int(0.05 * n_tok), 1)
    thresh = torch.sort(cov[mask > 0], descending=True).values[k - 1]
    assert int(sel.sum()) == k and torch.equal(sel, (cov >= thresh) & (mask > 0))
    loss = POLICY_LOSSES.get("kl_cov")(logp, old, adv, mask, P, ratio=0.05, kl_coef=0.5)
    close(loss, -adv * r + 0.5 * (logp - old).abs() * sel)


def test_vespo_weight_is_one_on_policy_and_peaks_at_k_over_lambda():
    # phi(w) = exp(lambda + k log w - lambda w): phi(1) = 1; A >= 0 defaults (2, 3): phi(2/3) = e^{3 - 2} (2/3)^2 = 1.2078
    loss, g = grad_of("vespo", [[0.0, 0.0]], [[1.0, 1.0]])
    close(g, [[-1.0, -1.0]])
    lw = math.log(2 / 3)
    loss, g = grad_of("vespo", [[lw / 2, lw / 2]], [[1.0, 1.0]])  # sum of log ratios = log(2/3)
    close(g, [[-math.e * (4 / 9)] * 2])
    # A < 0 uses (k, lambda) = (3, 2): phi(2/3) = e^{2 - 4/3} (2/3)^3
    _, g = grad_of("vespo", [[lw / 2, lw / 2]], [[-1.0, -1.0]])
    close(g, [[math.exp(2 - 4 / 3) * (8 / 27)] * 2])


def test_opsm_drops_only_negative_advantage_sequences_that_drifted():
    # row drift = mean(old - logp) = -mean(lr): row 0 lr = [-0.1, -0.1] -> drift 0.1 > 0.05; row 1 lr = 0 -> 0
    lr = [[-0.1, -0.1], [0.0, 0.0], [-0.1, -0.1]]
    adv = [[-1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]]
    loss, g = grad_of("ppo_clip_opsm", lr, adv, delta=0.05)
    ref, gref = grad_of("ppo_clip", lr, adv)
    close(loss, ref * t([[0.0], [1.0], [1.0]]))
    close(g, gref * t([[0.0], [1.0], [1.0]]))


# ---------------------------------------------------------------------------------------------
# Peer entries: corrections
# ---------------------------------------------------------------------------------------------


def test_tis_is_zero_off_the_mask_and_the_two_sided_and_sequence_forms():
    lr = torch.log(t([[0.25, 1.5, 4.0], [2.0, 2.0, 9.0]]))
    m = t([[1, 1, 1], [1, 1, 0]])
    p = CorrectionParams(tis_cap=2.0)
    close(CORRECTIONS.get("tis")(lr, m, p), [[0.25, 1.5, 2.0], [2.0, 2.0, 0.0]])
    close(CORRECTIONS.get("tis_two_sided")(lr, m, p, low=0.5), [[0.5, 1.5, 2.0], [2.0, 2.0, 0.0]])
    assert touched("tis_two_sided", lr, m, p, low=0.5).tolist() == [[True, False, True], [False, False, False]]
    # seq_tis: row 0 w = 0.25 * 1.5 * 4 = 1.5 (<= 2: kept); row 1 w = 2 * 2 = 4 (masked 9 left out)
    close(CORRECTIONS.get("seq_tis")(lr, m, p), [[1.5, 1.5, 1.5], [2.0, 2.0, 0.0]])
    close(CORRECTIONS.get("seq_tis")(lr, m, p, mode="mask"), [[1.5, 1.5, 1.5], [0.0, 0.0, 0.0]])
    assert touched("seq_tis", lr, m, p).tolist() == [[False] * 3, [True, True, False]]


def test_geo_rs_and_the_verl_k1_convention_mirror_the_bounds():
    # rho_b = geometric mean: row 0 = 1.3, row 1 = 0.7. Bounds (0.8, 1.5):
    #   ratio convention keeps rho in [0.8, 1.5]: row 0 kept, row 1 rejected
    #   verl_k1 ("0.8_1.5" on rollout/train) keeps rho in [1/1.5, 1/0.8] = [0.667, 1.25]: row 0 rejected, row 1 kept
    lr = torch.log(t([[1.3, 1.3], [0.7, 0.7]]))
    m = torch.ones_like(lr)
    p = CorrectionParams(seq_low=0.8, seq_high=1.5)
    close(CORRECTIONS.get("geo_rs")(lr, m, p), [[1.0, 1.0], [0.0, 0.0]])
    close(CORRECTIONS.get("geo_rs")(lr, m, p, convention="verl_k1"), [[0.0, 0.0], [1.0, 1.0]])
    close(CORRECTIONS.get("masked_seq_is")(lr, m, p, convention="verl_k1"), [[0.0, 0.0], [0.7, 0.7]])
    assert touched("geo_rs", lr, m, p).tolist() == [[False, False], [True, True]]  # kept weight 1 is untouched


# ---------------------------------------------------------------------------------------------
# Clip-Cov's entropy effect (theory.cov_clip) against the real loss
# ---------------------------------------------------------------------------------------------


def test_clip_cov_derivation_verifies_and_matches_its_lambdified_result():
    from solidrl.theory.cov_clip import clip_cov_entropy, derive_clip_cov
    d = derive_clip_cov(4)
    assert all(d.verify().values())
    rng = np.random.default_rng(0)
    l, c = -rng.random(4) * 3, rng.normal(size=4)
    cut = np.array([1.0, 0.0, 1.0, 0.0])
    f = d.lambdify("entropy/delta", [*(d.symbols[f"logp_{i}"] for i in range(1, 5)), *(d.symbols[f"coef_{i}"] for i in range(1, 5)),
                                     *(d.symbols[f"cut_{i}"] for i in range(1, 5)), __import__("solidrl.theory.derivation", fromlist=["STAT"]).STAT["lr"]])
    x = c * (1 - cut)
    close(f(*l, *c, *cut, 0.1), -0.1 * np.mean((l - l.mean()) * (x - x.mean())))
    # the predictor with every candidate cut is the same expression on its own candidate set
    adv = t(rng.normal(size=4) * 4)
    out = clip_cov_entropy({"logp": t(l), "adv": adv, "coef": t(c), "lr": t(0.1)}, ratio=1.0, lb=0.0, ub=1e9)
    cov = (adv.numpy() - adv.numpy().mean()) * (l - l.mean())
    x = c * (1 - ((cov > 0) & (cov < 1e9)))
    close(out["entropy/delta"], -0.1 * np.mean((l - l.mean()) * (x - x.mean())))


@pytest.mark.parametrize("seed", range(3))
def test_clip_cov_predicted_entropy_change_equals_the_cov_estimate_of_the_real_clip_cov_step(seed):
    # Predict from a ppo_clip step's coefficients which tokens Clip-Cov cuts and the dH that results; hold it
    # against the Cov estimate of the coefficients autograd gives for the real clip_cov loss (on-policy step).
    from solidrl.theory.cov_clip import clip_cov_entropy, expected_cut
    g = torch.Generator().manual_seed(seed)
    B, T = 8, 12
    logp = -torch.rand(B, T, generator=g, dtype=F64) * 4
    adv = (2 * torch.randn(B, 1, generator=g, dtype=F64)).expand(B, T)
    mask = (torch.rand(B, T, generator=g) < 0.85).double()
    kw = dict(ratio=0.5, lb=0.5, ub=5.0)  # n = floor(0.5 N) >= the candidates: every candidate is cut

    def coef(name, **k):
        lp = logp.clone().requires_grad_()
        loss = AGGREGATIONS.get("token-mean")(POLICY_LOSSES.get(name)(lp, logp, adv, mask, P, **k), mask, 1.0)
        return -torch.autograd.grad(loss, lp)[0][mask > 0]

    on = mask > 0
    stats = {"logp": logp[on], "adv": adv[on], "coef": coef("ppo_clip"), "lr": t(0.05)}
    q = expected_cut(stats["logp"], stats["adv"], **kw)
    assert 0 < int(q.sum()) and set(q.unique().tolist()) <= {0.0, 1.0}  # some tokens cut, deterministically
    c_real = coef("clip_cov", **kw)
    assert torch.equal(c_real == 0, q == 1)  # the predicted set is the set the loss cut
    l = stats["logp"]
    observed = float((-0.05 * (l - l.mean()) * (c_real - c_real.mean())).mean())
    pred = clip_cov_entropy(stats, **kw)["entropy/delta"]
    close(pred, observed, atol=1e-15, rtol=1e-12)
    full = float((-0.05 * (l - l.mean()) * (stats["coef"] - stats["coef"].mean())).mean())
    assert pred > full  # the cut tokens carried entropy decrease: cutting them gives it back


def test_kl_cov_penalty_has_no_gradient_on_the_first_on_policy_update():
    # |log r| at r = 1 has (sub)gradient 0, so KL-Cov's first update is the unclipped IS loss's: same dH
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g, dtype=F64)
    adv = torch.randn(3, 5, generator=g, dtype=F64)
    mask = torch.ones_like(logp)
    lp = logp.clone().requires_grad_()
    (gk,) = torch.autograd.grad(POLICY_LOSSES.get("kl_cov")(lp, logp, adv, mask, P, ratio=0.5, kl_coef=10.0).sum(), lp)
    close(gk, -adv)


def test_the_trainer_refuses_a_group_estimator_with_group_size_1_before_anything_runs():
    from solidrl.trainer.config import TrainConfig, apply_overrides
    from solidrl.trainer.loop import check_names
    for adv in sorted(GROUP_ESTIMATORS):
        cfg = apply_overrides(TrainConfig(), {"rollout.group_size": "1", "algo.advantage": adv})
        with pytest.raises(ConfigError, match="set rollout.group_size >= 2"):
            check_names(cfg)
    check_names(apply_overrides(TrainConfig(), {"rollout.group_size": "1", "algo.advantage": "reinforce"}))


def test_entry_parameters_follow_the_convention():
    # keyword-only, annotated int / float / bool / str, with a default of that type (the plugins plumbing reads them)
    import inspect
    import typing
    for reg in (ADVANTAGES, POLICY_LOSSES, AGGREGATIONS, KL_ESTIMATORS, CORRECTIONS):
        for name in reg:
            fn = reg.get(name)
            hints = typing.get_type_hints(inspect.unwrap(fn))
            for prm in inspect.signature(fn).parameters.values():
                if prm.kind is not prm.KEYWORD_ONLY:
                    continue
                tp = hints[prm.name]
                assert tp in (int, float, bool, str), (reg.kind, name, prm.name, tp)
                assert prm.default is not prm.empty and type(prm.default) is tp, (reg.kind, name, prm.name)

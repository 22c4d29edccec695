"""Property tests of the trainer's estimators (solidrl.trainer.algos), against independent references.

Hypothesis draws distributions, rewards and group sizes over wide ranges with their edges (all-equal
rewards, one-hot policies, infinite log-ratios); references are exact enumeration and autograd, never
the code under test. Names state the claim.
"""
import math
from itertools import product

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from solidrl.theory.advantages import derive_aggregation_weights

algos = pytest.importorskip("solidrl.trainer.algos")
# float64 as torch's default inside this module's tests only (conftest.float64_default): set at import, it
# leaked into every other test of the session and changed the trainer's numbers there
pytestmark = pytest.mark.usefixtures("float64_default")
SETTINGS = settings(max_examples=60, deadline=None)

# ---- strategies ------------------------------------------------------------------------------------


@st.composite
def distributions(draw, min_v=2, max_v=8, allow_onehot=True):
    """log-probabilities [V]: softmax of logits in [-30, 30], or a one-hot policy (log 0 = -inf elsewhere)."""
    V = draw(st.integers(min_v, max_v))
    if allow_onehot and draw(st.integers(0, 4)) == 0:  # one draw in five: a one-hot policy
        k = draw(st.integers(0, V - 1))
        return torch.where(torch.arange(V) == k, 0.0, -math.inf)
    logits = torch.tensor(draw(st.lists(st.floats(-30, 30), min_size=V, max_size=V)))
    return torch.log_softmax(logits, -1)


@st.composite
def reward_groups(draw, min_g=2, max_g=8):
    """rewards [N, G]: binary, integer-valued, wide floats, or all-equal groups."""
    N, G = draw(st.integers(1, 4)), draw(st.integers(min_g, max_g))
    kind = draw(st.sampled_from(["binary", "ints", "floats", "equal"]))
    if kind == "equal":
        return torch.full((N, G), draw(st.floats(-1e3, 1e3)))
    elem = {"binary": st.sampled_from([0.0, 1.0]), "ints": st.integers(-5, 5).map(float),
            "floats": st.floats(-1e3, 1e3)}[kind]
    return torch.tensor(draw(st.lists(st.lists(elem, min_size=G, max_size=G), min_size=N, max_size=N)))


def adv(name, r):
    return algos.ADVANTAGES.get(name)(r)


# ---- KL estimators -----------------------------------------------------------------------------------


def _all_tokens(logp, ref_logp, name):
    """k(x) at every token x as if sampled: [V]."""
    return algos.KL_ESTIMATORS.get(name)(logp[None], ref_logp[None], None, None)[0]


@SETTINGS
@given(distributions(), st.data())
def test_k1_and_k3_are_unbiased_by_exact_expectation(logp, data):
    """E_pi k1 = KL always; E_pi k3 = KL - pi_ref(outside supp pi): unbiased when pi_ref << pi.

    A one-hot policy shows the exception: E_pi[rho - 1] = pi_ref(supp pi) - 1, not 0.
    """
    ref = data.draw(distributions(len(logp), len(logp), allow_onehot=False))
    p = logp.exp()
    on = p > 0  # only tokens that can be sampled enter the expectation
    kl = float((p[on] * (logp[on] - ref[on])).sum())  # the reference, written here
    missing_ref_mass = 1 - float(ref[on].exp().sum())
    assert float((p[on] * _all_tokens(logp, ref, "k1")[on]).sum()) == pytest.approx(kl, rel=1e-9, abs=1e-10)
    k3 = float((p[on] * _all_tokens(logp, ref, "k3")[on]).sum())
    assert k3 == pytest.approx(kl - missing_ref_mass, rel=1e-9, abs=1e-10)
    exact = algos.KL_ESTIMATORS.get("exact")(logp[None, None], ref[None, None], logp[None, None], ref[None, None])
    assert float(exact) == pytest.approx(kl, rel=1e-9, abs=1e-10)


@SETTINGS
@given(st.lists(st.floats(-1e3, 0), min_size=1, max_size=20), st.data())
def test_k2_and_k3_are_nonnegative_pointwise(logp, data):
    logp = torch.tensor(logp)
    ref = torch.tensor(data.draw(st.lists(st.one_of(st.floats(-1e3, 0), st.just(-math.inf)),
                                          min_size=len(logp), max_size=len(logp))))
    for name in ("k2", "k3"):
        k = algos.KL_ESTIMATORS.get(name)(logp[None], ref[None], None, None)
        assert not torch.isnan(k).any() and (k >= 0).all(), name


@SETTINGS
@given(distributions(), st.data())
def test_k2_and_k3_expectations_are_nonnegative(logp, data):
    ref = data.draw(distributions(len(logp), len(logp), allow_onehot=False))
    p = logp.exp()
    on = p > 0
    for name in ("k2", "k3"):
        assert float((p[on] * _all_tokens(logp, ref, name)[on]).sum()) >= 0


# ---- advantage estimators ----------------------------------------------------------------------------


@SETTINGS
@given(reward_groups())
def test_rloo_advantages_sum_to_zero_per_group(r):
    a = adv("rloo", r)
    assert torch.allclose(a.sum(1), torch.zeros(len(r)), atol=1e-9 * (1 + float(r.abs().max())) * r.shape[1])


@SETTINGS
@given(reward_groups(), st.floats(-1e3, 1e3))
def test_rloo_and_dr_grpo_ignore_a_shift_of_all_rewards(r, c):
    scale = 1 + float(r.abs().max()) + abs(c)
    for name in ("rloo", "dr_grpo"):
        assert torch.allclose(adv(name, r + c), adv(name, r), atol=1e-12 * scale * r.shape[1]), name


@SETTINGS
@given(reward_groups(), st.floats(-1e3, 1e3))
def test_grpo_ignores_a_shift_of_all_rewards(r, c):
    sigma = r.std(1, correction=0)
    scale = 1 + float(r.abs().max()) + abs(c)
    assume(bool(((sigma == 0) | (sigma > 1e-6 * scale)).all()))  # a spread at rounding level is ill-posed
    tol = 1e-12 * scale * r.shape[1] / (sigma + 1e-6)
    assert ((adv("grpo", r + c) - adv("grpo", r)).abs() <= tol[:, None] + 1e-12).all()


@SETTINGS
@given(reward_groups(), st.floats(1e-2, 1e3))
def test_grpo_ignores_a_positive_scaling_up_to_its_epsilon(r, k):
    """A(k r) - A(r) = (r - m)(e/k - e)/((s + e)(s + e/k)), |.| <= sqrt(G) e |1 - 1/k| / (s + e/k), e = 1e-6."""
    e, G = algos.GRPO_STD_EPS, r.shape[1]
    sigma = r.std(1, correction=0)
    bound = math.sqrt(G) * e * abs(1 - 1 / k) / (sigma + e / k)
    rounding = 1e-12 * G * (1 + float(r.abs().max()) * max(k, 1)) / (sigma * min(k, 1) + e)
    assert ((adv("grpo", k * r) - adv("grpo", r)).abs() <= (bound + rounding)[:, None]).all()


@SETTINGS
@given(st.integers(2, 16), st.one_of(st.integers(-1000, 1000).map(float), st.sampled_from([0.0, 1.0, 0.5, -0.25])),
       st.sampled_from([torch.float32, torch.float64]))
def test_all_equal_rewards_give_zero_advantage(G, c, dtype):
    """Exactly representable rewards (binary, integers, dyadic): every estimator gives exactly 0."""
    r = torch.full((3, G), c, dtype=dtype)
    for name in ("grpo", "rloo", "dr_grpo"):
        assert (adv(name, r) == 0).all(), name


@SETTINGS
@given(st.integers(2, 16), st.floats(-1e3, 1e3))
def test_all_equal_rewards_give_advantage_at_rounding_level_for_rloo_and_dr_grpo(G, c):
    r = torch.full((2, G), c)
    for name in ("rloo", "dr_grpo"):
        assert (adv(name, r).abs() <= 8 * torch.finfo(r.dtype).eps * abs(c)).all(), name


def test_grpo_all_equal_float32_group_gives_exactly_zero_advantage():
    """16 rewards of 0.7 (float32): the mean's rounding error (~1e-8) over std + 1e-6 (~1e-8) once gave
    +0.056 to every sample; an all-equal group must give exactly 0 for every estimator."""
    for G, c in ((16, 0.7), (8, 0.9), (8, 0.1), (13, 8.038036346435547)):
        for name in ("grpo", "rloo", "dr_grpo"):
            a = adv(name, torch.full((1, G), c, dtype=torch.float32))
            assert (a == 0).all(), (name, G, c, a[0, 0].item())


def _expected_gradient(name, logits, arm_reward, G):
    """E over all K^G outcomes of 1/G sum_i A_i d log pi(o_i) / dz, exactly (tabular softmax bandit)."""
    K = len(logits)
    p = torch.softmax(logits, -1)
    outcomes = torch.tensor(list(product(range(K), repeat=G)))  # [K^G, G]
    prob = p[outcomes].prod(1)  # [K^G]
    a = adv(name, arm_reward[outcomes])  # [K^G, G]: the trainer's estimator on every outcome
    score = torch.nn.functional.one_hot(outcomes, K) - p  # [K^G, G, K]
    return (prob[:, None] * (a[:, :, None] * score).sum(1) / G).sum(0)


@SETTINGS
@given(st.integers(2, 4), st.integers(2, 4), st.data())
def test_rloo_expected_gradient_is_the_true_gradient_by_enumeration(K, G, data):
    logits = torch.tensor(data.draw(st.lists(st.floats(-8, 8), min_size=K, max_size=K)))
    arm_reward = torch.tensor(data.draw(st.lists(st.floats(-10, 10), min_size=K, max_size=K)))
    p = torch.softmax(logits, -1)
    true = p * (arm_reward - (p * arm_reward).sum())  # d E[r] / d z for a softmax bandit
    tol = 1e-10 * (1 + float(arm_reward.abs().max()))
    assert torch.allclose(_expected_gradient("rloo", logits, arm_reward, G), true, atol=tol)
    assert torch.allclose(_expected_gradient("dr_grpo", logits, arm_reward, G), (G - 1) / G * true, atol=tol)


@SETTINGS
@given(st.integers(2, 7), st.floats(-6, 6))
def test_grpo_expected_gradient_is_biased_by_the_stated_amount(G, theta):
    """2 arms paying 1 and 0, p = pi(arm 1): E grad_grpo[z_1] = E_{k~Bin(G,p)} sqrt(q(1-q)), q = k/G,
    against the true p (1 - p). E.g. G = 4, p = 1/2: 0.404 vs 0.25, GRPO's gradient is 1.616x the true one.
    """
    logits = torch.tensor([theta, 0.0])
    p = float(torch.softmax(logits, -1)[0])
    closed = sum(math.comb(G, k) * p**k * (1 - p) ** (G - k) * math.sqrt(k / G * (1 - k / G)) for k in range(G + 1))
    got = _expected_gradient("grpo", logits, torch.tensor([1.0, 0.0]), G)
    # GRPO's +1e-6 on sigma >= sqrt((G-1)/G^2) changes each mixed group's term by < 1e-5 relative
    assert float(got[0]) == pytest.approx(closed, rel=1e-5, abs=1e-12)
    assert float(got[1]) == pytest.approx(-closed, rel=1e-5, abs=1e-12)


def test_grpo_expected_gradient_at_p_half_g4_is_1616x_the_true_one():
    got = float(_expected_gradient("grpo", torch.zeros(2), torch.tensor([1.0, 0.0]), 4)[0])
    assert got / 0.25 == pytest.approx(1.6160, abs=1e-4)


# ---- policy losses --------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 6), st.floats(0.0, 0.9), st.floats(0.0, 5.0), st.data())
def test_ratio_losses_equal_vanilla_gradient_at_ratio_one(B, T, eps_low, eps_high, data):
    logp0 = torch.tensor(data.draw(st.lists(st.floats(-50, 0), min_size=B * T, max_size=B * T))).view(B, T)
    normal = st.floats(-1e3, 1e3).filter(lambda x: x == 0 or abs(x) > 1e-300)  # 0.5 x of a subnormal underflows
    a = torch.tensor(data.draw(st.lists(normal, min_size=B * T, max_size=B * T))).view(B, T)
    mask = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=B * T, max_size=B * T))).view(B, T)
    p = algos.PolicyLossParams(eps_low=eps_low, eps_high=eps_high)

    def grad(name):
        logp = logp0.clone().requires_grad_()
        (algos.POLICY_LOSSES.get(name)(logp, logp0.clone(), a, mask, p) * mask).sum().backward()
        return logp.grad

    want = -a * mask  # vanilla: d(-A logp)/d logp
    assert torch.equal(grad("vanilla"), want)
    for name in ("ppo_clip", "dual_clip", "seq_ratio"):
        assert torch.allclose(grad(name), want, rtol=1e-12, atol=0), name


# ---- corrections ------------------------------------------------------------------------------------

log_ratios = st.lists(st.one_of(st.floats(-800, 800), st.sampled_from([math.inf, -math.inf, 0.0])),
                      min_size=1, max_size=30)


@SETTINGS
@given(log_ratios, st.floats(1e-3, 100))
def test_tis_weight_never_exceeds_c(lr, C):
    lr = torch.tensor(lr)
    w = algos.CORRECTIONS.get("tis")(lr[None], torch.ones(1, len(lr)), algos.CorrectionParams(tis_cap=C))[0]
    assert (w <= C).all() and (w >= 0).all()
    assert torch.equal(w, torch.minimum(lr.exp(), torch.tensor(C)))


@SETTINGS
@given(log_ratios, st.floats(0.0, 1.0), st.floats(1.0, 100))
def test_icepop_weight_is_the_ratio_inside_and_zero_outside(lr, alpha, beta):
    lr = torch.tensor(lr)
    w = algos.CORRECTIONS.get("icepop")(lr[None], torch.ones(1, len(lr)),
                                        algos.CorrectionParams(icepop_low=alpha, icepop_high=beta))[0]
    inside = (lr >= (math.log(alpha) if alpha > 0 else -math.inf)) & (lr <= math.log(beta))
    assert torch.equal(w[inside], lr.exp()[inside]) and (w[~inside] == 0).all()


# ---- aggregation ------------------------------------------------------------------------------------

AGG = derive_aggregation_weights()


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 8), st.sampled_from(algos.AGGREGATIONS.names()), st.floats(0.5, 100),
       st.data())
def test_each_aggregation_gives_the_token_weights_of_its_formula(B, T, mode, C, data):
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    vals = torch.tensor(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=B * T, max_size=B * T))).view(B, T)
    per_token = torch.where(mask > 0, vals, torch.nan).requires_grad_()  # garbage off the mask must not leak
    loss = algos.AGGREGATIONS.get(mode)(per_token, mask, C)
    loss.backward()
    S = float(mask.sum())
    f = AGG.lambdify(mode, [AGG.symbols[k] for k in "LBCS"])
    want = torch.zeros(B, T)
    if S > 0:  # an all-empty batch has weight 0 everywhere
        for b in range(B):
            if lengths[b] > 0:
                want[b, : lengths[b]] = float(f(float(lengths[b]), B, C, S))
    assert torch.allclose(per_token.grad, want, rtol=1e-12, atol=0), mode
    assert torch.isfinite(loss)
    assert float(loss.detach()) == pytest.approx(float((want * torch.where(mask > 0, vals, 0.0)).sum()), rel=1e-9, abs=1e-9)
    assert torch.allclose(algos.token_weights(mode, mask, C), want, rtol=1e-12, atol=0)

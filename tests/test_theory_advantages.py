"""Advantage estimators and aggregation (theory.advantages): symbolic checks and the gradient-norm predictor.

The estimators' own properties (RLOO sums to zero, shift/scale invariance, exact expected gradients of
the trainer's functions) are in test_trainer_algos_properties.py.
"""
import numpy as np
import pytest
import torch

from solidrl.theory import advantages
from solidrl.theory.predictors import PREDICTORS

# float64 as torch's default inside this module's tests only (conftest.float64_default): set at import, it
# leaked into every other test of the session and changed the trainer's numbers there
pytestmark = pytest.mark.usefixtures("float64_default")
EPS = torch.tensor(1e-6, dtype=torch.float64)  # stats grpo_std_eps: the trainer's GRPO epsilon, as the recorder writes it


@pytest.mark.parametrize("G", [2, 3, 5])
def test_grpo_gradnorm_ratio_symbolic(G):
    assert all(advantages.derive_grpo_gradnorm_ratio(G=G).verify().values())


@pytest.mark.parametrize("seed", range(5))
def test_grpo_gradnorm_ratio_predictor_equals_lambdified_derivation(seed):
    d = advantages.derive_grpo_gradnorm_ratio(G=4, groups=3)
    args = [d.symbols["G"], *(d.symbols[f"p_{i}"] for i in (1, 2, 3))]
    rng = np.random.default_rng(seed)
    G = int(rng.integers(2, 9))
    k = rng.integers(0, G + 1, size=3)
    k[0] = max(1, min(k[0], G - 1))  # at least one mixed group, else the ratio is absent
    reward = torch.tensor(np.concatenate([[1.0] * kk + [0.0] * (G - kk) for kk in k]))
    gi = torch.arange(3).repeat_interleave(G)
    out = PREDICTORS.get("grpo_gradnorm_ratio")({"reward": reward, "group_index": gi, "grpo_std_eps": EPS})
    for metric, got in out.items():
        # GRPO's +1e-6 on sigma >= sqrt(1/G (1 - 1/G)) moves the ratio by < 1e-5 relative
        assert got == pytest.approx(float(d.lambdify(metric, args)(G, *(k / G))), rel=1e-5), metric


def test_grpo_gradnorm_ratio_absent_without_a_mixed_group():
    st = {"reward": torch.tensor([1.0, 1, 0, 0]), "group_index": torch.tensor([0, 0, 1, 1]), "grpo_std_eps": EPS}
    assert PREDICTORS.get("grpo_gradnorm_ratio")(st) == {}


def _bandit_grad_norms(K, G, n_prompts, seed):
    """Actual ||grad|| of the GRPO and Dr.GRPO surrogates on tabular prompts (own logits each), K arms."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_prompts, K, generator=g)
    arm_reward = (torch.rand(n_prompts, K, generator=g) < torch.rand(n_prompts, 1, generator=g)).double()
    o = torch.multinomial(torch.softmax(z, -1), G, replacement=True, generator=g)  # [n, G]
    r = arm_reward.gather(1, o)
    norms = {}
    for name in ("grpo", "dr_grpo"):
        mean, std = r.mean(1, keepdim=True), r.std(1, keepdim=True, correction=0)
        A = (r - mean) / (std + 1e-6) if name == "grpo" else r - mean
        w = z.clone().requires_grad_()
        (-(A * torch.log_softmax(w, -1).gather(1, o)).sum()).backward()
        norms[name] = float(w.grad.norm())
    return norms, {"reward": r.flatten(), "group_index": torch.arange(n_prompts).repeat_interleave(G),
                   "grpo_std_eps": EPS}


def test_grpo_gradnorm_ratio_holds_when_responses_are_distinct():
    """K = 5000 arms: samples rarely share an arm, score vectors are near-orthogonal, the model holds (5%)."""
    norms, st = _bandit_grad_norms(K=5000, G=8, n_prompts=64, seed=0)
    pred = PREDICTORS.get("grpo_gradnorm_ratio")(st)["grad/norm_ratio_vs_dr_grpo"]
    assert norms["grpo"] / norms["dr_grpo"] == pytest.approx(pred, rel=0.05)


def test_grpo_gradnorm_ratio_two_arms_follow_the_correlated_formula():
    """K = 2: samples of one arm share a score, ||g_dr||^2 = 2 G^2 v^2 per group, v = q(1-q) (not ~ G v).

    The actual ratio is then sqrt(sum_g v / sum_g v^2), and the prediction sqrt(#mixed / sum_g v) is never
    below it (Cauchy-Schwarz: (sum v)^2 <= #mixed sum v^2), equal iff all mixed groups share q(1-q).
    Here the prediction is 1.5% high.
    """
    G = 8
    norms, st = _bandit_grad_norms(K=2, G=G, n_prompts=64, seed=1)
    q = st["reward"].view(-1, G).mean(1)
    v = q * (1 - q)
    actual_model = float((v.sum() / (v**2).sum()).sqrt())  # the 1e-6 is negligible at this precision
    assert norms["grpo"] / norms["dr_grpo"] == pytest.approx(actual_model, rel=1e-4)
    pred = PREDICTORS.get("grpo_gradnorm_ratio")(st)["grad/norm_ratio_vs_dr_grpo"]
    assert actual_model <= pred < 1.05 * actual_model


@pytest.mark.parametrize("G", [2, 3, 4, 5])
def test_rloo_unbiased_symbolic(G):
    assert all(advantages.derive_rloo_unbiased(G).verify().values())


def test_rloo_unbiased_grpo_overshoots_at_p_half():
    """G = 4, p = 1/2: E grad_grpo = 6/16 * 1/2 + 2 * 4/16 * sqrt(3)/4 = 0.404 vs the true 0.25 (x1.616)."""
    d = advantages.derive_rloo_unbiased(4)
    val = float(d.result["E grad/grpo"].subs(d.symbols["p"], 0.5))
    assert val == pytest.approx(6 / 32 + np.sqrt(3) / 8, rel=1e-12)
    assert val / 0.25 == pytest.approx(1.6160, abs=1e-4)


def test_aggregation_weights_symbolic():
    assert all(advantages.derive_aggregation_weights().verify().values())
    assert all(advantages.derive_aggregation_weights((1, 4, 4, 2)).verify().values())

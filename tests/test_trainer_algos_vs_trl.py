"""Peer parity: solidrl.trainer.algos against the installed TRL 1.16 GRPOTrainer loss code.

Every TRL `loss_type` is run through TRL's own `GRPOTrainer._compute_loss` (unbound, on a stand-in `self`
that supplies the per-token log-probs a model would, and the trainer attributes the method reads), with
TRL's static `get_off_policy_mask` and `get_gamma_weights`. The loss value and its gradient with respect
to the log-probs are compared with solidrl's policy loss + aggregation, in float64 and float32, with
padding and an empty row. TRL's advantage is inline in `_generate_and_score_completions` (it needs reward
functions and a model); it is restated here from TRL's lines with TRL's own `nanstd`.
TRL is in the dev extras; a missing TRL fails this module loudly.
"""
from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

try:
    import trl
    from trl import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import nanstd
except ImportError as exc:  # never a skip
    raise ImportError("tests/test_trainer_algos_vs_trl.py needs TRL 1.16: pip install -e '.[dev]' (scripts/install.sh)") from exc

from solidrl.trainer.algos import ADVANTAGES, AGGREGATIONS, POLICY_LOSSES, PolicyLossParams

DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}
MAX_LEN = 9  # TRL max_completion_length (the Dr. GRPO constant)


def test_the_installed_trl_is_the_audited_version():
    assert trl.__version__.startswith("1.16"), f"docs/peers.md audits TRL 1.16; installed {trl.__version__}"
    d = GRPOConfig.__dataclass_fields__
    assert d["epsilon"].default == 0.2 and d["epsilon_high"].default is None  # the CISPO trap's premise
    assert d["loss_type"].default == "dapo"


def close(a, b, dtype, **kw):
    tol = dict(TOL[dtype])
    tol.update(kw)
    as64 = lambda x: x.double() if torch.is_tensor(x) else torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(as64(a), as64(b), **tol)


def batch(dtype, seed=0, B=6, T=7, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
    old = (logp + scale * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[2] = 0  # an empty row
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    return [x.to(dtype) for x in (logp, old, adv, mask)]


def trl_loss(loss_type, logp, old, adv, mask, *, eps_low=0.2, eps_high=0.28, level="token", delta=None,
             opsm=None, sapo=(1.0, 1.05), vespo=(2.0, 3.0, 3.0, 2.0)):
    """TRL's GRPOTrainer._compute_loss on given log-probs; returns (loss, d loss / d logp)."""
    lp = logp.clone().requires_grad_()
    args = SimpleNamespace(delta=delta, sapo_temperature_pos=sapo[0], sapo_temperature_neg=sapo[1],
                           vespo_k_pos=vespo[0], vespo_lambda_pos=vespo[1], vespo_k_neg=vespo[2],
                           vespo_lambda_neg=vespo[3], use_bias_correction_kl=False, steps_per_generation=1)
    acc = SimpleNamespace(num_processes=1, sync_gradients=True, reduce=lambda x, reduction="sum": x,
                          gather=lambda x: x, gather_for_metrics=lambda x: x)
    me = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, torch.zeros_like(lp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=opsm, importance_sampling_level=level, beta=0.0,
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False, args=args,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, accelerator=acc,
        max_completion_length=MAX_LEN, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        get_off_policy_mask=GRPOTrainer.get_off_policy_mask, get_gamma_weights=GRPOTrainer.get_gamma_weights)
    B, T = logp.shape
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "num_items_in_batch": mask.sum()}
    loss = GRPOTrainer._compute_loss(me, None, inputs)
    (g,) = torch.autograd.grad(loss, lp)
    return loss.detach(), g


def our_loss(name, logp, old, adv, mask, agg, p, norm_const=MAX_LEN, agg_kw=None, **kw):
    lp = logp.clone().requires_grad_()
    a = adv[:, None].expand_as(lp)
    loss = AGGREGATIONS.get(agg)(POLICY_LOSSES.get(name)(lp, old, a, mask, p, **kw), mask, float(norm_const),
                                 **(agg_kw or {}))
    (g,) = torch.autograd.grad(loss, lp)
    return loss.detach(), g


P = PolicyLossParams(eps_low=0.2, eps_high=0.28)

# TRL loss_type -> (solidrl loss, its parameters, solidrl aggregation, TRL importance_sampling_level)
LOSS_TYPES = {
    "grpo": ("ppo_clip", {}, "seq-mean-token-mean", "token"),
    "bnpo": ("ppo_clip", {}, "token-mean", "token"),
    "dr_grpo": ("ppo_clip", {}, "seq-mean-token-sum-norm", "token"),
    "dapo": ("ppo_clip", {}, "token-mean", "token"),
    "luspo": ("seq_ratio", {}, "seq-mean-token-sum", "sequence"),
    "sapo": ("sapo", {"tau_pos": 1.0, "tau_neg": 1.05}, "seq-mean-token-mean", "token"),
    "vespo": ("vespo", {}, "token-mean", "token"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_every_loss_type_matches_value_and_gradient(loss_type, dtype):
    ours, kw, agg, level = LOSS_TYPES[loss_type]
    for seed, scale in ((0, 0.05), (1, 0.3), (2, 1.0)):
        logp, old, adv, mask = batch(dtype, seed=seed, scale=scale)
        v, gv = trl_loss(loss_type, logp, old, adv, mask, level=level)
        o, go = our_loss(ours, logp, old, adv, mask, agg, P, **kw)
        # TRL's SAPO temperatures come from torch.where on Python floats: float32 (1.05 rounded) even in float64
        kw_tol = {"rtol": 1e-6, "atol": 1e-7} if (loss_type == "sapo" and dtype == torch.float64) else {}
        close(o, v, dtype, msg=f"{loss_type} value seed {seed}", **kw_tol)
        close(go * mask, gv * mask, dtype, msg=f"{loss_type} gradient seed {seed}", **kw_tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grpo_sequence_level_is_gspo_under_seq_mean_token_mean(dtype):
    logp, old, adv, mask = batch(dtype, seed=3)
    v, gv = trl_loss("grpo", logp, old, adv, mask, level="sequence")
    o, go = our_loss("seq_ratio", logp, old, adv, mask, "seq-mean-token-mean", P)
    close(o, v, dtype)
    close(go * mask, gv * mask, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cispo_upper_bound_is_trls_epsilon_high_minus_one(dtype):
    logp, old, adv, mask = batch(dtype, seed=4, scale=1.0)
    v, gv = trl_loss("cispo", logp, old, adv, mask, eps_high=4.0)  # TRL caps r at 4.0 = 1 + our eps_high 3.0
    o, go = our_loss("cispo", logp, old, adv, mask, "token-mean", PolicyLossParams(eps_high=3.0), bounds="upper")
    close(o, v, dtype)
    close(go * mask, gv * mask, dtype)


def test_cispo_default_epsilon_trap_caps_every_weight_at_0_2():
    # TRL's epsilon_high defaults to epsilon = 0.2, and CISPO reads it as the absolute cap: w = min(r, 0.2).
    # On policy (r = 1) every token's gradient is 0.2 of REINFORCE's; solidrl's cap is 1 + eps_high >= 1.
    logp, _, adv, mask = batch(torch.float64, seed=5)
    _, gv = trl_loss("cispo", logp, logp.clone(), adv, mask, eps_high=0.2)
    _, go = our_loss("vanilla", logp, logp, adv, mask, "token-mean", P)
    close(gv * mask, 0.2 * go * mask, torch.float64)
    _, go = our_loss("cispo", logp, logp, adv, mask, "token-mean", PolicyLossParams(eps_high=0.2), bounds="upper")
    close(gv * mask, 0.2 * go * mask, torch.float64)  # ours at the same eps_high: the full on-policy gradient


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_sided_clipping_delta_is_dual_clip(dtype):
    logp, old, adv, mask = batch(dtype, seed=6, scale=1.5)
    v, gv = trl_loss("bnpo", logp, old, adv, mask, delta=2.5)
    o, go = our_loss("dual_clip", logp, old, adv, mask, "token-mean", PolicyLossParams(0.2, 0.28, dual_clip_c=2.5))
    close(o, v, dtype)
    close(go * mask, gv * mask, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_off_policy_sequence_mask_matches(dtype):
    logp, old, adv, mask = batch(dtype, seed=7, scale=0.3)
    old = old - 0.05 * torch.arange(old.shape[0], dtype=dtype)[:, None]  # rows drift by different amounts
    for delta in (0.0, 0.05, 0.2):
        v, gv = trl_loss("bnpo", logp, old, adv, mask, opsm=delta)
        o, go = our_loss("ppo_clip_opsm", logp, old, adv, mask, "token-mean", P, delta=delta)
        close(o, v, dtype)
        close(go * mask, gv * mask, dtype)


def trl_advantages(r, scale="group"):
    """TRL 1.16 _generate_and_score_completions (sum_then_normalize), lines restated with TRL's nanstd."""
    N, G = r.shape
    flat = r.reshape(-1)
    mean = torch.nanmean(flat.view(-1, G), dim=1).repeat_interleave(G)
    std = nanstd(flat.view(-1, G), dim=1).repeat_interleave(G) if scale == "group" else nanstd(flat).expand_as(flat)
    adv = flat - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return adv.view(N, G)


@pytest.mark.parametrize("dtype", DTYPES)
def test_trl_advantages_are_grpo_with_unbiased_std_and_1e4(dtype):
    g = torch.Generator().manual_seed(8)
    r = torch.randn(4, 6, generator=g, dtype=torch.float64).to(dtype)
    # TRL's nanstd forms its Bessel factor count / (count - 1) from integer counts: a float32 factor (rtol 1e-7)
    for scale in ("group", "batch"):
        close(ADVANTAGES.get("grpo")(r, unbiased_std=True, eps=1e-4, scale=scale), trl_advantages(r, scale), dtype,
              rtol=max(TOL[dtype]["rtol"], 1e-7))
    close(ADVANTAGES.get("dr_grpo")(r), trl_advantages(r, "none"), dtype)
    # our default (population std, 1e-6): theirs * sqrt(G/(G-1)) only up to the epsilons; 1e-4 makes it inexact
    ours = ADVANTAGES.get("grpo")(r)
    ratio = ours / trl_advantages(r)
    assert (ratio - math.sqrt(6 / 5)).abs().max() < 1e-3
    # an all-equal group: both give 0 (TRL: 0 / (0 + 1e-4))
    r[0] = 0.7
    assert torch.equal(ADVANTAGES.get("grpo")(r, unbiased_std=True, eps=1e-4)[0], torch.zeros(6, dtype=dtype))

"""Loss-side registries: advantages, policy losses, loss aggregation, KL estimators, off-policy corrections.

Every entry is a small pure tensor function with one signature per registry (docs/architecture.md,
"Extension points"); the trainer composes them, the probes and predictors read the same formulas.

    ADVANTAGES      fn(rewards[N, G], *, params) -> adv[N, G]                       N prompts, G samples per prompt
    POLICY_LOSSES   fn(logp[B,T], old_logp[B,T], adv[B,T], mask[B,T], p: PolicyLossParams, *, params) -> loss[B,T]
    AGGREGATIONS    fn(per_token[B,T], mask[B,T], norm_const: float, *, params) -> scalar
    KL_ESTIMATORS   fn(logp[B,T], ref_logp[B,T], full_logp[B,T,V] | None, full_ref_logp[B,T,V] | None) -> [B,T]
    CORRECTIONS     fn(log_ratio[B,T], mask[B,T], p: CorrectionParams, *, params) -> weight[B,T]   (no grad)

An entry's own parameters are its keyword-only arguments (after `*`), each typed (int, float, bool, str)
with a default; where verl and TRL disagree, the semantics is such a parameter and the docstring says
which value matches which peer (docs/peers.md has the whole table).

`mask` is float 0/1 over response tokens. A per-token loss may hold anything at masked positions;
the aggregation drops them (`torch.where`, so even a non-finite value there cannot leak in).

Left out on purpose: value functions and GAE (no critic; advantages are group baselines), where the
KL enters (reward or loss: the trainer's choice), coefficients (KL beta, entropy bonus), and every
metric (probes compute metrics from the step context; losses return only the loss).
Nothing is clamped silently: verl clamps k3 to [-10, 10] and log-ratios to [-20, 20]; we do not.
The clipping and truncation below are the declared formulas, and `touched` exposes what a
correction changed so a probe can count it.

Size: ~1000 lines because it holds every peer's entry (docs/peers.md) beside its siblings; each entry is
a small pure function and the five registries stay in one place, as verl's core_algos keeps them.

References: volcengine/verl `verl/trainer/ppo/core_algos.py` (registries, `agg_loss`) and
`verl/trainer/ppo/rollout_corr_helper.py` (rollout corrections); each function cites its paper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from solidrl.theory.registry import Registry

from .errors import ConfigError

__all__ = [
    "ADVANTAGES", "POLICY_LOSSES", "AGGREGATIONS", "KL_ESTIMATORS", "CORRECTIONS",
    "PolicyLossParams", "CorrectionParams",
    "token_weights", "touched", "gather_logprobs", "entropy_from_logits",
    "advantage", "policy_loss", "aggregation", "kl_estimator", "correction",
    "GROUP_ESTIMATORS", "check_group_size",
]


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """x * mask, with exactly 0 (not 0 * garbage) where mask == 0."""
    return torch.where(mask > 0, x * mask, torch.zeros((), dtype=x.dtype, device=x.device))


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where den == 0 (an empty row or batch has weight 0, never NaN)."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _row_mean(x: Tensor, mask: Tensor) -> Tensor:
    """[B,T] -> [B]: mean of x over each row's masked tokens; 0 for an empty row."""
    return _safe_div(_masked(x, mask).sum(-1), mask.sum(-1))


# ---------------------------------------------------------------------------------------------
# Advantage estimators: fn(rewards[N, G]) -> adv[N, G]
# ---------------------------------------------------------------------------------------------

AdvantageFn = Callable[[Tensor], Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator", field="algo.advantage")

GRPO_STD_EPS = 1e-6  # DeepSeekMath gives no epsilon; 1e-6 keeps an all-equal group at 0 (0 / 1e-6), not NaN.


def _rewards(rewards: Tensor) -> Tensor:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N prompts, G samples], got shape {tuple(rewards.shape)}")
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def _group_centered(r: Tensor, dev: Tensor) -> Tensor:
    """dev with exact zeros in groups whose rewards are all equal.

    Why: in float32 the mean of G equal rewards is off by ~1 ulp, and GRPO divides that rounding
    error by std + 1e-6 ~ 1e-8, turning a group with no signal into a same-sign advantage of
    O(0.1) (e.g. 16 rewards of 0.7 gave +0.056 each). Such a group carries no information.
    """
    equal = (r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True))
    return torch.where(equal, torch.zeros_like(dev), dev)


GROUP_ESTIMATORS: frozenset[str] = frozenset(
    {"grpo", "rloo", "dr_grpo", "grpo_passk", "pass_at_k", "reinforce_pp_baseline", "gpg"})
"""Advantage estimators whose baseline is the prompt's own group: they need G >= 2 samples per prompt."""


def check_group_size(name: str, G: int) -> None:
    """Refuse a group estimator with fewer than 2 samples per prompt (one line, a ConfigError: exit 2 at the CLI).

    Why: with G = 1 the group baseline is the sample itself, so every advantage is 0 (grpo, dr_grpo) and the
    run trains on nothing without a word; verl instead substitutes mean 0 / std 1 (A = r / (1 + 1e-6)).
    """
    if name in GROUP_ESTIMATORS and G < 2:
        raise ConfigError(f"advantage estimator {name!r} needs at least 2 samples per prompt (a group baseline), "
                          f"got group size {G}; set rollout.group_size >= 2 or pick reinforce / reinforce_pp / raw")


def _group_rewards(rewards: Tensor, name: str) -> Tensor:
    r = _rewards(rewards)
    check_group_size(name, r.shape[1])
    return r


@ADVANTAGES.register("grpo")
def grpo(rewards: Tensor, *, eps: float = GRPO_STD_EPS, unbiased_std: bool = False, scale: str = "group") -> Tensor:
    """GRPO group-normalized advantage.

    A_{n,i} = (r_{n,i} - mean_g r_n) / (std r + eps), std the population std (correction=0) by default:
    std_g = sqrt(1/G sum_i (r_i - mean)^2); for binary rewards with success rate p, std_g = sqrt(p(1-p)).
    rewards: [N, G], G >= 2; returns [N, G]. An all-equal group gives exactly 0.

    Parameters: eps (1e-6); unbiased_std (False: the population std; True: correction=1, as verl and TRL);
    scale ("group": the std of each group; "batch": the std of all N*G rewards, TRL scale_rewards="batch").
    verl = (eps=1e-6, unbiased_std=True); TRL = (eps=1e-4, unbiased_std=True). With the defaults ours =
    theirs * sqrt(G/(G-1)) up to the eps (exactly so only for verl's 1e-6).
    Source: Shao et al. 2024, DeepSeekMath, sec. 4.1.2 (outcome supervision: A_i = (r_i - mean(r)) / std(r)).
    """
    if scale not in ("group", "batch"):
        raise ConfigError(f"grpo scale must be 'group' or 'batch', got {scale!r}")
    r = _group_rewards(rewards, "grpo")
    mean = r.mean(dim=1, keepdim=True)
    corr = 1 if unbiased_std else 0
    std = r.std(dim=1, keepdim=True, correction=corr) if scale == "group" else r.std(correction=corr)
    return _group_centered(r, r - mean) / (std + eps)


@ADVANTAGES.register("rloo")
def rloo(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out baseline.

    A_{n,i} = r_{n,i} - 1/(G-1) sum_{j != i} r_{n,j}  =  G/(G-1) (r_{n,i} - mean_g r_n).
    rewards: [N, G] with G >= 2; returns [N, G]. Sums to 0 in every group.

    Source: Kool, van Hoof, Welling 2019, "Buy 4 REINFORCE samples, get a baseline for free!";
    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE-style optimization ... in LLMs", sec. 3 (RLOO).
    """
    r = _group_rewards(rewards, "rloo")
    G = r.shape[1]
    loo_mean = (r.sum(dim=1, keepdim=True) - r) / (G - 1)
    return _group_centered(r, r - loo_mean)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: Tensor) -> Tensor:
    """Dr. GRPO advantage: A_{n,i} = r_{n,i} - mean_g r_n (GRPO without the std division).

    rewards: [N, G], G >= 2; returns [N, G].
    Source: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective", sec. 3.2
    (Dr. GRPO drops the 1/std(r) question-difficulty bias; its 1/|o_i| length bias is the aggregation's job).
    """
    r = _group_rewards(rewards, "dr_grpo")
    return _group_centered(r, r - r.mean(dim=1, keepdim=True))


@ADVANTAGES.register("reinforce")
def reinforce(rewards: Tensor) -> Tensor:
    """REINFORCE with a batch-mean baseline: A_{n,i} = r_{n,i} - mean over all N*G rewards.

    rewards: [N, G]; returns [N, G]. Source: Williams 1992, "Simple statistical gradient-following
    algorithms ...", sec. 4 (reinforcement baseline b independent of the action).
    """
    r = _rewards(rewards)
    return r - r.mean()


@ADVANTAGES.register("raw")
def raw(rewards: Tensor) -> Tensor:
    """No baseline: A_{n,i} = r_{n,i} (Williams 1992 with b = 0). rewards: [N, G]; returns a copy, [N, G]."""
    return _rewards(rewards).clone()


@ADVANTAGES.register("grpo_passk")
def grpo_passk(rewards: Tensor, *, norm_by_std: bool = True, eps: float = GRPO_STD_EPS) -> Tensor:
    """Pass@G advantage with verl's grpo_passk semantics: only the best sample of a group is credited.

    A_{n,i*} = (r_max - r_second) / (std_unbiased(r_n) + eps) for i* = argmax_i r_{n,i}; A_{n,i} = 0 otherwise
    (norm_by_std=False drops the division, verl's norm_adv_by_std_in_grpo=False). Ties at the top give 0.
    rewards: [N, G], G >= 2. Source: Tang et al. 2025, "Optimizing Language Models for Inference Time
    Objectives using Reinforcement Learning" (arXiv 2503.19595), the leave-one-out pass@k gradient with k = G;
    verl core_algos compute_grpo_passk_outcome_advantage (the semantics reproduced here).
    """
    r = _group_rewards(rewards, "grpo_passk")
    top, idx = torch.topk(r, 2, dim=1)
    gap = top[:, 0] - top[:, 1]
    if norm_by_std:
        gap = gap / (r.std(dim=1, correction=1) + eps)
    return torch.zeros_like(r).scatter(1, idx[:, :1], gap.unsqueeze(1))


def _comb_row(n: int, choose: int, offset: int, dtype) -> Tensor:
    """[C(i - offset, choose) for i = 1..n] as float64 (0 where the binomial is empty)."""
    vals = [math.comb(i - offset, choose) if choose >= 0 and i - offset >= choose else 0 for i in range(1, n + 1)]
    return torch.tensor(vals, dtype=torch.float64).to(dtype)


@ADVANTAGES.register("pass_at_k")
def pass_at_k(rewards: Tensor, *, k: int = 4, normalize: bool = True, eps: float = GRPO_STD_EPS) -> Tensor:
    """Per-sample unbiased pass@k advantage (any reward, exact over all k-subsets of the group).

    For a group of G rewards and 1 <= k <= G, over the C(G, k) subsets S of size k:
      rho    = E_S[max_{j in S} r_j]                       (the unbiased pass@k, max@k for non-binary rewards)
      m_i    = E_S[max_{j in S} r_j | i in S]              (the reward of the subsets containing sample i)
      A_i    = (m_i - rho) / (sigma + eps),  sigma^2 = E_S[max_S r^2] - rho^2   (normalize=False: no division)
    In sorted order r_(1) <= ... <= r_(G): rho = sum_i C(i-1, k-1) r_(i) / C(G, k) and
    m_(i) = [C(i-1, k-1) r_(i) + sum_{j>i} C(j-2, k-2) r_(j)] / C(G-1, k-1). sum_i A_i = 0 (mean_i m_i = rho).
    Binary rewards, N- failures: rho = 1 - C(N-, k)/C(G, k), A+ = (1 - rho)/sigma,
    A- = (1 - rho - C(N- - 1, k-1)/C(G-1, k-1))/sigma, sigma = sqrt(rho(1 - rho)) (Chen et al.'s closed form).
    k = 1 is GRPO (population std). rewards: [N, G]; returns [N, G]; an all-equal group gives 0.
    Source: Chen et al. 2025, "Pass@k Training for Adaptively Balancing Exploration and Exploitation of LRMs"
    (arXiv 2508.10751), sec. 3 (analytical advantage); Walder & Karkhanis 2025, "Pass@K Policy Optimization"
    (arXiv 2505.15201), the unbiased per-sample estimator (theirs is m_i * k / G, the same direction).
    """
    r = _group_rewards(rewards, "pass_at_k")
    G = r.shape[1]
    if not 1 <= k <= G:
        raise ConfigError(f"pass_at_k needs 1 <= k <= group size, got k={k} with group size {G}")
    rs, order = torch.sort(r, dim=1)
    w_max = _comb_row(G, k - 1, 1, r.dtype)        # C(i-1, k-1): subsets where r_(i) is the max
    w_pair = _comb_row(G, k - 2, 2, r.dtype)       # C(j-2, k-2): subsets holding i < j with r_(j) the max
    rho = (rs * w_max).sum(1, keepdim=True) / math.comb(G, k)
    m2 = (rs**2 * w_max).sum(1, keepdim=True) / math.comb(G, k)
    above = torch.flip(torch.cumsum(torch.flip(rs * w_pair, [1]), 1), [1]) - rs * w_pair  # sum_{j > i}
    m_sorted = (w_max * rs + above) / math.comb(G - 1, k - 1)
    m = torch.empty_like(r).scatter(1, order, m_sorted)
    dev = _group_centered(r, m - rho)
    if not normalize:
        return dev
    return dev / ((m2 - rho**2).clamp(min=0).sqrt() + eps)


def _whiten(x: Tensor, eps: float) -> Tensor:
    """(x - mean) / sqrt(var_unbiased + eps) over all N*G entries (verl masked_whiten on one token per sample)."""
    if x.numel() < 2:
        raise ConfigError("reinforce_pp whitens over the batch and needs at least 2 samples per step")
    return (x - x.mean()) * torch.rsqrt(x.var(correction=1) + eps)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(rewards: Tensor, *, eps: float = 1e-8) -> Tensor:
    """REINFORCE++ (outcome reward, gamma = 1): the rewards whitened over the whole batch.

    A_{n,i} = (r_{n,i} - mean r) / sqrt(var_unbiased r + eps), mean and var over all N*G samples.
    verl whitens over tokens (each sample's return repeated over its length): the same when every response
    has one token; with lengths L_b its statistics are length-weighted (docs/peers.md gives the factor).
    Source: Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning LLMs" (arXiv 2501.03262),
    global advantage normalization; verl compute_reinforce_plus_plus_outcome_advantage.
    """
    return _whiten(_rewards(rewards), eps)


@ADVANTAGES.register("reinforce_pp_baseline")
def reinforce_pp_baseline(rewards: Tensor, *, eps: float = 1e-8) -> Tensor:
    """REINFORCE++-baseline: subtract the group mean, then whiten over the batch.

    A = whiten(r_{n,i} - mean_g r_n), whiten(x) = (x - mean x) / sqrt(var_unbiased x + eps) over all N*G.
    rewards: [N, G], G >= 2. Source: Hu 2025, REINFORCE++ (arXiv 2501.03262), the group-baseline variant;
    verl compute_reinforce_plus_plus_baseline_outcome_advantage (token-level whitening: see reinforce_pp).
    """
    r = _group_rewards(rewards, "reinforce_pp_baseline")
    return _whiten(_group_centered(r, r - r.mean(dim=1, keepdim=True)), eps)


@ADVANTAGES.register("gpg")
def gpg(rewards: Tensor, *, f_norm: float = 1.0) -> Tensor:
    """GPG advantage: A_{n,i} = alpha (r_{n,i} - mean_g r_n) / f_norm, alpha = N G / max(#{r != 0}, 1).

    alpha rescales the batch by the share of non-zero rewards (verl counts non-zero rewards, not
    non-zero advantages). rewards: [N, G], G >= 2. Source: Chu et al. 2025, "GPG: A Simple and Strong
    Reinforcement Learning Baseline for Model Reasoning" (arXiv 2504.02546), eq. of the corrected
    gradient; verl compute_gpg_outcome_advantage (the semantics reproduced here).
    """
    if not f_norm > 0:
        raise ConfigError(f"gpg f_norm must be > 0, got {f_norm}")
    r = _group_rewards(rewards, "gpg")
    alpha = r.numel() / max(int(torch.count_nonzero(r)), 1)
    return alpha * _group_centered(r, r - r.mean(dim=1, keepdim=True)) / f_norm


# ---------------------------------------------------------------------------------------------
# Policy losses: fn(logp, old_logp, adv, mask, p) -> per-token loss [B,T] (to be minimized)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLossParams:
    """Clip ranges of the ratio-based losses."""

    eps_low: float = 0.2
    """Lower clip range: ratios below 1 - eps_low stop moving for A < 0 (PPO's epsilon). In [0, 1)."""
    eps_high: float = 0.2
    """Upper clip range: ratios above 1 + eps_high stop moving for A > 0. DAPO's clip-higher raises it (0.28)."""
    dual_clip_c: float = 3.0
    """Dual-clip cap: for A < 0 the loss never exceeds c * |A| (Ye et al. 2020 use c = 3). Must be > 1."""

    def __post_init__(self):
        if not 0.0 <= self.eps_low < 1.0:
            raise ValueError(f"eps_low must be in [0, 1), got {self.eps_low}")
        if self.eps_high < 0.0:
            raise ValueError(f"eps_high must be >= 0, got {self.eps_high}")
        if self.dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c must be > 1 (else it cuts the unclipped loss), got {self.dual_clip_c}")


PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, PolicyLossParams], Tensor]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss", field="algo.policy_loss")


def _clipped_surrogate(ratio: Tensor, adv: Tensor, p: PolicyLossParams) -> Tensor:
    """-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), written as max of the two losses."""
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - p.eps_low, 1.0 + p.eps_high))


@POLICY_LOSSES.register("vanilla")
def vanilla(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams) -> Tensor:
    """On-policy REINFORCE: loss_t = -A_t * log pi(a_t).

    d loss / d logp_t = -A_t. Ignores old_logp (the on-policy form: ratio == 1), mask and p.
    Source: Williams 1992, REINFORCE (the likelihood-ratio gradient E[A grad log pi]).
    """
    return -adv * logp


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams) -> Tensor:
    """PPO clipped surrogate: loss_t = -min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t).

    r_t = exp(logp_t - old_logp_t); all tensors [B,T]. At r_t = 1 the gradient is -A_t (= vanilla's).
    Source: Schulman et al. 2017, PPO, eq. 7 (L^CLIP); asymmetric eps_low / eps_high is DAPO's
    clip-higher, Yu et al. 2025, sec. 3.1. verl clamps log r to [-20, 20] first; we do not.
    TRL's two-sided clipping (`delta`, INTELLECT-2) is dual_clip with c = delta (identical for delta > 1 + eps_high).
    """
    return _clipped_surrogate(torch.exp(logp - old_logp), adv, p)


@POLICY_LOSSES.register("dual_clip")
def dual_clip(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams) -> Tensor:
    """Dual-clip PPO: for A_t < 0, loss_t = min(ppo_clip_t, -c A_t); for A_t >= 0, loss_t = ppo_clip_t.

    In objective form (Ye et al.): J = max(min(r A, clip(r) A), c A) for A < 0. With A < 0 the PPO loss
    -r A = r |A| grows without bound in r; the second clip caps it at c |A| (zero gradient beyond r = c).
    Example: A = -1, r = 5, eps = 0.2, c = 3: ppo_clip = -min(-5, -1.2) = 5, dual_clip = min(5, 3) = 3.
    Source: Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL", eq. 5.
    """
    loss = ppo_clip(logp, old_logp, adv, mask, p)
    return torch.where(adv < 0, torch.minimum(loss, -p.dual_clip_c * adv), loss)


@POLICY_LOSSES.register("seq_ratio")
def seq_ratio(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams) -> Tensor:
    """GSPO sequence-level ratio, token form (GSPO-token).

    s_b = exp( mean_{t: mask} (logp_{b,t} - old_logp_{b,t}) )            (eq. 7: length-normalized seq ratio)
    s_{b,t} = sg[s_b] * exp(logp_{b,t} - sg[logp_{b,t}])                   (sec. 4.3: value s_b, grad per token)
    loss_{b,t} = -min(s_{b,t} A_{b,t}, clip(s_{b,t}, 1 - eps_low, 1 + eps_high) A_{b,t})   (eq. 5)

    sg = stop-gradient (detach). d loss / d logp_{b,t} = -s_b A_{b,t} when unclipped, else 0: the clip
    decision is per sequence. With A constant over a sequence (GRPO) and "seq-mean-token-mean"
    aggregation the gradient equals GSPO's eq. 10; other aggregations are honoured as given.
    An empty row has s_b = 1. Not clamped: verl clamps log s_{b,t} at 10 (s <= e^10 = 22026), which matters
    only where the clip does not already bind (A < 0 with mean log-ratio > 10); TRL does not clamp.
    TRL importance_sampling_level="sequence" with loss_type "grpo" = this + seq-mean-token-mean; "luspo" =
    this + seq-mean-token-sum (same values and gradients). Source: Zheng et al. 2025, "Group Sequence Policy
    Optimization", eq. 5-7, sec. 4.3.
    """
    seq_log_ratio = _row_mean((logp - old_logp).detach(), mask)  # [B]
    ratio = torch.exp(seq_log_ratio.unsqueeze(-1) + logp - logp.detach())  # [B,T], value s_b
    return _clipped_surrogate(ratio, adv, p)


def _sg_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    """exp(logp - old_logp), detached: the IS ratio used as a constant coefficient."""
    return torch.exp((logp - old_logp).detach())


@POLICY_LOSSES.register("cispo")
def cispo(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams, *,
          bounds: str = "two_sided") -> Tensor:
    """CISPO: clip the IS weight, never the gradient: loss_t = -sg(clip(r_t)) A_t log pi(a_t).

    bounds "two_sided": clip(r) = clamp(r, 1 - eps_low, 1 + eps_high)   (verl compute_policy_loss_cispo);
    bounds "upper":     clip(r) = min(r, 1 + eps_high)                     (MiniMax-M1's practice, TRL).
    TRL clamps to max = epsilon_high, an absolute cap: TRL epsilon_high = 1 + our eps_high. Its default
    epsilon_high = epsilon = 0.2 caps every weight at 0.2 (docs/peers.md, hazards). d loss/d logp_t = -clip(r_t) A_t:
    every token keeps a gradient (unlike PPO's clip, which zeroes it).
    Source: MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention"
    (arXiv 2506.13585), sec. 3.1 (CISPO objective).
    """
    if bounds not in ("two_sided", "upper"):
        raise ConfigError(f"cispo bounds must be 'two_sided' (verl) or 'upper' (TRL), got {bounds!r}")
    r = _sg_ratio(logp, old_logp)
    w = r.clamp(1.0 - p.eps_low, 1.0 + p.eps_high) if bounds == "two_sided" else r.clamp(max=1.0 + p.eps_high)
    return -w * adv * logp


@POLICY_LOSSES.register("sapo")
def sapo(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams, *,
         tau_pos: float = 1.0, tau_neg: float = 1.05) -> Tensor:
    """SAPO soft gate: loss_t = -f(r_t; tau_t) A_t, f(r; tau) = (4/tau) sigmoid(tau (r - 1)), r_t = exp(logp - old).

    tau_t = tau_pos if A_t > 0 else tau_neg. f(1) = 2/tau and f'(1) = 1: on policy the gradient is -A_t
    (vanilla's); away from r = 1 the gate decays smoothly instead of PPO's hard clip. eps_* are unused.
    Defaults are verl's and TRL's (1.0, 1.05). verl always aggregates SAPO with seq-mean-token-mean.
    Source: Gao et al. 2025, "Soft Adaptive Policy Optimization" (arXiv 2511.20347), sec. 3 (gate function).
    """
    if not (tau_pos > 0 and tau_neg > 0):
        raise ConfigError(f"sapo temperatures must be > 0, got tau_pos={tau_pos}, tau_neg={tau_neg}")
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    return -torch.sigmoid(tau * (torch.exp(logp - old_logp) - 1.0)) * (4.0 / tau) * adv


@POLICY_LOSSES.register("gmpo")
def gmpo(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams) -> Tensor:
    """GMPO: the geometric mean of token ratios, clipped per token in log space (verl "geo_mean").

    l_t = logp_t - old_logp_t;  l~_t = sgn(A_t) min(sgn(A_t) l_t, sgn(A_t) clamp(l_t, -eps_low, eps_high));
    s_b = exp(mean_{t: mask} l~_t);  A_b = mean_{t: mask} A_t;  loss_{b,t} = -A_b s_b on every token of row b.
    Under "seq-mean-token-mean" the aggregate is 1/B sum_b -A_b s_b, verl's torch.mean over rows (empty rows
    count as 0 in B, as verl's); the gradient flows through s_b into every token. eps_* bound the LOG ratio
    (the paper's (-0.4, 0.4) is eps_low = eps_high = 0.4). verl divides by n_b + 1e-8 (relative 1e-8/n_b).
    Source: Zhao et al. 2025, "Geometric-Mean Policy Optimization" (arXiv 2507.20673), eq. 5-7.
    """
    lr = logp - old_logp
    sgn = torch.sign(adv)
    l_clip = sgn * torch.minimum(sgn * lr, sgn * lr.clamp(-p.eps_low, p.eps_high))
    s_b = torch.exp(_row_mean(l_clip, mask))
    a_b = _row_mean(adv, mask)
    return (-a_b * s_b).unsqueeze(-1).expand_as(logp)


def _dppo_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, valid: Tensor, trunc_c: float) -> Tensor:
    if not trunc_c > 0:
        raise ConfigError(f"dppo trunc_c must be > 0, got {trunc_c}")
    w = _sg_ratio(logp, old_logp).clamp(max=trunc_c)
    return -adv * w * logp * valid.detach().to(logp.dtype)


@POLICY_LOSSES.register("dppo_tv")
def dppo_tv(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams, *,
            trunc_c: float = 20.0) -> Tensor:
    """DPPO-Binary-TV: truncated-IS policy gradient, masked where the token's probability moved too far.

    loss_t = -A_t sg(min(r_t, C)) log pi_t * v_t, v_t = [pi_t - pi_old,t <= eps_high] if A_t > 0 else
    [pi_t - pi_old,t >= -eps_low] (eps_* are probability thresholds here, as verl reuses clip_ratio);
    C = trunc_c (verl reads actor.clip_ratio_c, whose config default is 3, though its code falls back to 20;
    20 here). d loss/d logp_t = -A_t min(r_t, C) v_t.
    Source: arXiv 2602.04879 (DPPO, binary TV divergence), via verl compute_policy_loss_dppo_tv.
    """
    d = torch.exp(logp) - torch.exp(old_logp)
    valid = torch.where(adv > 0, d <= p.eps_high, d >= -p.eps_low)
    return _dppo_loss(logp, old_logp, adv, valid, trunc_c)


@POLICY_LOSSES.register("dppo_kl")
def dppo_kl(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams, *,
            trunc_c: float = 20.0) -> Tensor:
    """DPPO-Binary-KL: as dppo_tv, with the binary KL of the sampled token as the divergence.

    D_t = pi_old (log pi_old - log pi) + (1 - pi_old) log((1 - pi_old + 1e-8) / (1 - pi + 1e-8)) (per token);
    v_t = [D_t <= eps_high or pi <= pi_old] if A_t > 0 else [D_t <= eps_low or pi >= pi_old];
    loss_t = -A_t sg(min(r_t, C)) log pi_t v_t. The 1e-8 is verl's (keeps pi = 1 finite).
    Source: arXiv 2602.04879 (DPPO, binary KL divergence), via verl compute_policy_loss_dppo_kl.
    """
    lp, olp = logp.detach(), old_logp
    pi, pi_old = torch.exp(lp), torch.exp(olp)
    bkl = pi_old * (olp - lp) + (1 - pi_old) * torch.log((1.0 - pi_old + 1e-8) / (1.0 - pi + 1e-8))
    valid = torch.where(adv > 0, (bkl <= p.eps_high) | (pi <= pi_old), (bkl <= p.eps_low) | (pi >= pi_old))
    return _dppo_loss(logp, old_logp, adv, valid, trunc_c)


@POLICY_LOSSES.register("dro")
def dro(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams, *,
        beta: float = 0.1) -> Tensor:
    """Policy gradient with a quadratic log-ratio penalty: loss_t = -(A_t log pi_t - beta/2 (log pi_t - log pi_old,t)^2).

    d loss/d logp_t = -A_t + beta (logp_t - old_logp_t): on policy, vanilla's gradient. eps_* unused.
    verl requires policy_loss.dro_beta > 0 and has no default; 0.1 here is a placeholder, not a recommendation.
    Source: the squared-loss regularizer of Direct Reward Optimisation (Richemond et al. 2024, "Offline
    Regularised Reinforcement Learning for Large Language Models Alignment", arXiv 2405.19107) as verl's
    compute_policy_loss_dro states it.
    """
    if not beta > 0:
        raise ConfigError(f"dro beta must be > 0, got {beta}")
    return -(logp * adv - 0.5 * beta * (logp - old_logp) ** 2)


def _token_cov(adv: Tensor, logp: Tensor, mask: Tensor) -> Tensor:
    """cov_t = (A_t - mean A)(logp_t - mean logp), means over the masked tokens of the batch (detached)."""
    n = mask.sum().clamp(min=1)
    lp = logp.detach()
    return (adv - _masked(adv, mask).sum() / n) * (lp - _masked(lp, mask).sum() / n)


def clip_cov_selected(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams, *,
                      ratio: float = 2e-4, lb: float = 1.0, ub: float = 5.0, seed: int = 0) -> Tensor:
    """Bool [B,T]: the tokens Clip-Cov detaches (see clip_cov). Exposed for probes and predictors."""
    if not ratio > 0:
        raise ConfigError(f"clip_cov ratio must be > 0, got {ratio}")
    r = torch.exp((logp - old_logp).detach())
    clipped = (-adv * r.clamp(1.0 - p.eps_low, 1.0 + p.eps_high) > -adv * r)
    cov = _token_cov(adv, logp, mask)
    cand = (mask > 0) & ~clipped & (cov > lb) & (cov < ub)
    n_clip = max(int(ratio * float(mask.sum())), 1)
    idx = torch.nonzero(cand.flatten()).squeeze(-1)
    if idx.numel() > n_clip:
        g = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(idx.numel(), generator=g)[:n_clip].to(idx.device)]
    out = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    out[idx] = True
    return out.view_as(mask)


@POLICY_LOSSES.register("clip_cov")
def clip_cov(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams, *,
             ratio: float = 2e-4, lb: float = 1.0, ub: float = 5.0, seed: int = 0) -> Tensor:
    """Clip-Cov: PPO clip, plus the gradient of a few high-covariance tokens cut.

    cov_t = (A_t - mean A)(logp_t - mean logp) over the batch's tokens; candidates: lb < cov_t < ub and not
    already PPO-clipped; n = max(floor(ratio * #tokens), 1) of them, drawn uniformly (all when fewer), get
    loss 0 (no gradient); every other token has ppo_clip's loss. The draw uses a torch.Generator seeded with
    `seed` (verl draws from the global RNG), so the same batch always cuts the same tokens.
    Why: by Cui et al.'s law dH ~ -lr Cov(logp, A), the largest positive covariance terms drive entropy down.
    Source: Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models"
    (arXiv 2505.22617), sec. 5.2 (Clip-Cov; r = 2e-4, omega in (1, 5) as defaults).
    """
    cut = clip_cov_selected(logp, old_logp, adv, mask, p, ratio=ratio, lb=lb, ub=ub, seed=seed)
    loss = _clipped_surrogate(torch.exp(logp - old_logp), adv, p)
    return torch.where(cut, loss * 0.0, loss)


def kl_cov_selected(logp: Tensor, adv: Tensor, mask: Tensor, *, ratio: float = 2e-4) -> Tensor:
    """Bool [B,T]: the top max(floor(ratio * #tokens), 1) tokens by cov_t, where KL-Cov adds its penalty."""
    if not ratio > 0:
        raise ConfigError(f"kl_cov ratio must be > 0, got {ratio}")
    out = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    valid = torch.nonzero((mask > 0).flatten()).squeeze(-1)
    if valid.numel():
        cov = _token_cov(adv, logp, mask).flatten()[valid]
        k = max(1, int(valid.numel() * ratio))
        out[valid[torch.topk(cov, k).indices]] = True
    return out.view_as(mask)


@POLICY_LOSSES.register("kl_cov")
def kl_cov(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams, *,
           ratio: float = 2e-4, kl_coef: float = 0.1) -> Tensor:
    """KL-Cov: unclipped IS loss, plus a |log r| penalty on the top-covariance tokens.

    loss_t = -A_t r_t + kl_coef |log r_t| 1[t in top-k cov], r_t = exp(logp_t - old_logp_t), k = max(floor(ratio *
    #tokens), 1), cov_t as in clip_cov. No PPO clip (as in verl). kl_coef defaults to verl's ppo_kl_coef (0.1).
    Source: Cui et al. 2025 (arXiv 2505.22617), sec. 5.2 (KL-Cov); verl compute_policy_loss_kl_cov.
    """
    sel = kl_cov_selected(logp, adv, mask, ratio=ratio)
    lr = logp - old_logp
    loss = -adv * torch.exp(lr)
    return torch.where(sel, loss + kl_coef * lr.abs(), loss)


@POLICY_LOSSES.register("vespo")
def vespo(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams, *,
          k_pos: float = 2.0, lambda_pos: float = 3.0, k_neg: float = 3.0, lambda_neg: float = 2.0) -> Tensor:
    """VESPO: a gamma-shaped weight of the SEQUENCE ratio scales a REINFORCE loss: loss_t = -sg(phi_b) A_t log pi_t.

    log w_b = clamp(sum_{t: mask} clamp(l_t, -20, 20), log 1e-8, 20), l_t = logp_t - old_logp_t (a sum, not a mean);
    phi(w) = exp(lambda + k log w - lambda w) (so phi(1) = 1, peak at w = k / lambda); (k, lambda) = (k_pos,
    lambda_pos) where A_t >= 0 else (k_neg, lambda_neg), lambda floored at 1e-4; a non-finite phi is 0.
    The clamps are part of TRL's definition and kept so the weights match it. Defaults are TRL's.
    Source: TRL 1.16 GRPOTrainer.get_gamma_weights (loss_type="vespo").
    """
    lw = _masked((logp - old_logp).detach().clamp(-20.0, 20.0), mask).sum(-1, keepdim=True)
    lw = lw.clamp(math.log(1e-8), 20.0)
    pos = adv >= 0
    kk = torch.where(pos, torch.full_like(adv, k_pos), torch.full_like(adv, k_neg))
    lam = torch.where(pos, torch.full_like(adv, lambda_pos), torch.full_like(adv, lambda_neg)).clamp(min=1e-4)
    phi = torch.exp(lam + kk * lw - lam * torch.exp(lw)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    return -phi * adv * logp


@POLICY_LOSSES.register("ppo_clip_opsm")
def ppo_clip_opsm(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: PolicyLossParams, *,
                  delta: float = 1e-3) -> Tensor:
    """PPO clip with DeepSeek-V3.2's off-policy sequence mask (OPSM).

    keep_{b,t} = [A_t >= 0] or [mean_{t: mask} (old_logp - sg(logp))_b <= delta]; loss = ppo_clip * keep.
    A negative-advantage sequence that drifted more than delta (a k1 estimate of KL(pi_old || pi)) is dropped.
    It lives here, not in CORRECTIONS, because it needs A and the current policy. TRL measures the drift
    from the sampler's log-probs when vLLM IS is on; here from old_logp (= TRL without vLLM). TRL has no default
    delta (None = off); 1e-3 here is a placeholder. An empty row has drift 0.
    Source: DeepSeek-AI 2025, "DeepSeek-V3.2" technical report, sec. on off-policy sequence masking; TRL 1.16
    GRPOTrainer.get_off_policy_mask.
    """
    drift = _row_mean(old_logp - logp.detach(), mask).unsqueeze(-1)
    keep = (adv >= 0) | (drift <= delta)
    return ppo_clip(logp, old_logp, adv, mask, p) * keep.to(logp.dtype)


# ---------------------------------------------------------------------------------------------
# Loss aggregation: fn(per_token[B,T], mask[B,T], norm_const) -> scalar
# ---------------------------------------------------------------------------------------------

AggregationFn = Callable[[Tensor, Tensor, float], Tensor]
AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation", field="algo.loss_agg")


EMPTY_ROWS = ("skip", "count")


def _n_rows(mask: Tensor, empty_rows: str) -> Tensor | int:
    """The B of a seq-mean: all rows ("count": TRL, and probes.metrics.seq_mean's default) or rows with >= 1 token ("skip": verl)."""
    if empty_rows not in EMPTY_ROWS:
        raise ConfigError(f"empty_rows must be 'skip' (verl) or 'count' (TRL), got {empty_rows!r}")
    return (mask.sum(-1) > 0).sum() if empty_rows == "skip" else mask.shape[0]


@AGGREGATIONS.register("token-mean")
def token_mean(per_token: Tensor, mask: Tensor, norm_const: float) -> Tensor:
    """L = sum_{b,t} l m / sum_{b,t} m: every response token weighs the same (0 for an all-empty batch).

    norm_const is unused. Source: Yu et al. 2025, DAPO, sec. 3.3 (token-level policy gradient loss).
    """
    return _safe_div(_masked(per_token, mask).sum(), mask.sum())


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(per_token: Tensor, mask: Tensor, norm_const: float, *, empty_rows: str = "count") -> Tensor:
    """L = 1/B' sum_b ( sum_t l m / sum_t m ): each sequence weighs 1/B', split over its tokens.

    B' = every row (empty_rows="count", the default: TRL's loss_type="grpo", and probes.metrics.seq_mean's
    default, so the loss and the metric agree) or the rows with at least one token ("skip": verl's agg_loss).
    An empty row contributes 0 either way; 0 for an all-empty batch. norm_const is unused.
    Why count: each sampled response keeps the weight 1/B the GRPO objective gives it (theory.advantages
    derive_aggregation_weights), however many rows a token filter empties.
    Source: Shao et al. 2024, DeepSeekMath, eq. 3 (the GRPO objective's 1/G sum_i 1/|o_i| sum_t).
    """
    return _safe_div(_row_mean(per_token, mask).sum(), torch.as_tensor(_n_rows(mask, empty_rows), dtype=per_token.dtype))


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(per_token: Tensor, mask: Tensor, norm_const: float, *, empty_rows: str = "count") -> Tensor:
    """L = 1/B' sum_b sum_t l m: every token weighs 1/B', so long sequences weigh more. norm_const is unused.

    B' as in seq-mean-token-mean (empty_rows "count" = TRL's loss_type="luspo", the default; "skip" = verl).
    Source: the sum-over-tokens REINFORCE estimator (Williams 1992) averaged over sequences; verl `agg_loss`.
    """
    return _safe_div(_masked(per_token, mask).sum(), torch.as_tensor(_n_rows(mask, empty_rows), dtype=per_token.dtype))


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(per_token: Tensor, mask: Tensor, norm_const: float, *, empty_rows: str = "count") -> Tensor:
    """L = sum_{b,t} l m / (B' * norm_const), norm_const a constant (Dr. GRPO: the max response length).

    Every token weighs 1/(B' norm_const) whatever the lengths in the batch. B' counts every row by default
    (empty_rows="count": TRL's loss_type="dr_grpo", with norm_const = max_completion_length); "skip" is verl's
    (whose loss_scale_factor defaults to the padded width T). Source: Liu et al. 2025, Dr. GRPO, sec. 3.2
    (replace 1/|o_i| by a constant).
    """
    if not norm_const > 0:
        raise ValueError(f"seq-mean-token-sum-norm needs norm_const > 0 (the max response length), got {norm_const}")
    n = torch.as_tensor(_n_rows(mask, empty_rows), dtype=per_token.dtype)
    return _safe_div(_masked(per_token, mask).sum(), n * norm_const)


def _seq_weight(m: Tensor, empty_rows: str) -> Tensor:
    n = torch.as_tensor(_n_rows(m, empty_rows), dtype=m.dtype)
    return torch.where(n > 0, 1.0 / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(n))


# d L / d l_{b,t} for each aggregation, written out in closed form (tests hold them against autograd).
_TOKEN_WEIGHTS: dict[str, Callable[..., Tensor]] = {
    "token-mean": lambda m, c: _safe_div(m, m.sum()),
    "seq-mean-token-mean": lambda m, c, empty_rows="count": _safe_div(m, m.sum(-1, keepdim=True)) * _seq_weight(m, empty_rows),
    "seq-mean-token-sum": lambda m, c, empty_rows="count": m * _seq_weight(m, empty_rows),
    "seq-mean-token-sum-norm": lambda m, c, empty_rows="count": m * _seq_weight(m, empty_rows) / c,
}


def token_weights(agg_name: str, mask: Tensor, norm_const: float, **params) -> Tensor:
    """w_{b,t} = d L / d l_{b,t} for aggregation `agg_name` (with its keyword parameters): [B,T], 0 at masked tokens.

    Every aggregation here is linear in the per-token loss, so L = sum_{b,t} w_{b,t} l_{b,t} exactly.
    token-mean: m / sum m;  seq-mean-token-mean: m / (B' sum_t m);  seq-mean-token-sum: m / B';
    seq-mean-token-sum-norm: m / (B' norm_const); B' the rows counted (empty_rows).
    """
    AGGREGATIONS.check(agg_name)
    if agg_name not in _TOKEN_WEIGHTS:
        raise ValueError(f"no closed-form token weights for loss aggregation {agg_name!r}")
    if agg_name == "seq-mean-token-sum-norm" and not norm_const > 0:
        raise ValueError(f"seq-mean-token-sum-norm needs norm_const > 0, got {norm_const}")
    return _TOKEN_WEIGHTS[agg_name](mask, norm_const, **params)


# ---------------------------------------------------------------------------------------------
# KL estimators: per-token estimate of KL(pi || pi_ref) from tokens a_t ~ pi
# ---------------------------------------------------------------------------------------------

KLFn = Callable[[Tensor, Tensor, Optional[Tensor], Optional[Tensor]], Tensor]
KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator", field="algo.kl_estimator")


@KL_ESTIMATORS.register("k1")
def k1(logp: Tensor, ref_logp: Tensor, full_logp: Optional[Tensor], full_ref_logp: Optional[Tensor]) -> Tensor:
    """k1 = log pi(a) - log pi_ref(a): unbiased for KL(pi || pi_ref), high variance, can be negative.

    logp, ref_logp: [B,T] at the sampled tokens. Source: Schulman 2020, "Approximating KL Divergence" (blog).
    """
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def k2(logp: Tensor, ref_logp: Tensor, full_logp: Optional[Tensor], full_ref_logp: Optional[Tensor]) -> Tensor:
    """k2 = 1/2 (log pi(a) - log pi_ref(a))^2: >= 0, biased (low bias when pi ~ pi_ref). Source: Schulman 2020."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logp: Tensor, ref_logp: Tensor, full_logp: Optional[Tensor], full_ref_logp: Optional[Tensor]) -> Tensor:
    """k3 = (rho - 1) - log rho, rho = pi_ref(a) / pi(a): unbiased and >= 0 (since log x <= x - 1).

    Computed as expm1(d) - d with d = ref_logp - logp, accurate for small d. Never clamped (verl clamps
    to [-10, 10]). Source: Schulman 2020, "Approximating KL Divergence" (blog).
    """
    d = ref_logp - logp
    return torch.expm1(d) - d


@KL_ESTIMATORS.register("exact")
def exact(logp: Tensor, ref_logp: Tensor, full_logp: Optional[Tensor], full_ref_logp: Optional[Tensor]) -> Tensor:
    """KL(pi(.|s_t) || pi_ref(.|s_t)) = sum_v pi(v) (log pi(v) - log pi_ref(v)), exactly, per position.

    full_logp, full_ref_logp: [B,T,V] log-probabilities; returns [B,T]. logp / ref_logp are unused.
    Terms with pi(v) = 0 are 0 (0 log 0 = 0), also when log pi(v) = -inf, and their gradient is 0, not NaN;
    pi(v) > 0 with pi_ref(v) = 0 gives +inf, the true value.
    """
    missing = [n for n, x in (("full_logp", full_logp), ("full_ref_logp", full_ref_logp)) if x is None]
    if missing:
        raise ValueError(f"exact KL needs the full [B,T,V] distributions; missing: {', '.join(missing)}")
    prob = full_logp.exp()
    support = prob > 0
    zero = torch.zeros((), dtype=full_logp.dtype, device=full_logp.device)
    # sanitize both logs off the support so neither the value nor the backward sees 0 * inf
    diff = torch.where(support, full_logp, zero) - torch.where(support, full_ref_logp, zero)
    return (prob * diff).sum(-1)


# ---------------------------------------------------------------------------------------------
# Off-policy corrections: weight[B,T] from log_ratio = log pi_train_old(a) - log pi_rollout(a)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrectionParams:
    """Thresholds of the rollout corrections (ratio = pi_train_old / pi_rollout)."""

    tis_cap: float = 2.0
    """TIS truncation C: weight = min(ratio, C) (Yao et al. 2025 and verl default 2)."""
    icepop_low: float = 0.5
    """IcePop alpha: tokens with ratio < alpha get weight 0 (Ring-1T uses 0.5)."""
    icepop_high: float = 2.0
    """IcePop beta: tokens with ratio > beta get weight 0 (Ring-1T uses 5; 2 keeps it symmetric to 0.5 in log)."""
    seq_low: float = 0.5
    """masked_seq_is: a sequence whose geometric-mean ratio is below this gets weight 0."""
    seq_high: float = 2.0
    """masked_seq_is: a sequence whose geometric-mean ratio is above this gets weight 0."""

    def __post_init__(self):
        if not self.tis_cap > 0:
            raise ValueError(f"tis_cap must be > 0, got {self.tis_cap}")
        for lo, hi in (("icepop_low", "icepop_high"), ("seq_low", "seq_high")):
            if not 0 <= getattr(self, lo) <= getattr(self, hi):
                raise ValueError(f"need 0 <= {lo} <= {hi}, got {getattr(self, lo)} and {getattr(self, hi)}")


def _in_ratio_range(log_ratio: Tensor, low: float, high: float) -> Tensor:
    """low <= exp(log_ratio) <= high, compared in log space (exp(log 5.0) != 5.0 in float64; log 0 = -inf)."""
    log_low, log_high = (math.log(x) if x > 0 else -math.inf for x in (low, high))
    return (log_ratio >= log_low) & (log_ratio <= log_high)


CorrectionFn = Callable[[Tensor, Tensor, CorrectionParams], Tensor]
CORRECTIONS: Registry[CorrectionFn] = Registry("off-policy correction", field="offpolicy.correction")


@CORRECTIONS.register("none")
def no_correction(log_ratio: Tensor, mask: Tensor, p: CorrectionParams) -> Tensor:
    """weight = 1: the rollout samples are treated as if drawn from pi_train_old (the mismatch is ignored)."""
    return torch.ones_like(log_ratio)


@CORRECTIONS.register("tis")
@torch.no_grad()
def tis(log_ratio: Tensor, mask: Tensor, p: CorrectionParams) -> Tensor:
    """Truncated importance sampling: weight_t = min(exp(log_ratio_t), C) m_t, C = p.tis_cap.

    0 at masked positions (as verl's rollout_is_weights * response_mask). verl clamps log_ratio to [-20, 20]
    before exp; we do not. Source: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
    Off-Policy RL Training" (blog, fengyao.notion.site/off-policy-rl); truncation as in Espeholt et al. 2018,
    IMPALA, eq. 1 (rho-bar).
    """
    return _masked(torch.exp(log_ratio).clamp(max=p.tis_cap), mask)


@CORRECTIONS.register("tis_two_sided")
@torch.no_grad()
def tis_two_sided(log_ratio: Tensor, mask: Tensor, p: CorrectionParams, *, low: float = 0.5) -> Tensor:
    """Two-sided truncated IS: weight_t = clamp(exp(log_ratio_t), low, C) m_t, C = p.tis_cap.

    Ratios below `low` are raised to it (a floor on the weight), above C cut to C. low = 0 is tis.
    TRL vllm_importance_sampling_mode="token_truncate" with (clip_min, clip_max) = (low, C) (TRL's default
    clip_min None is low = 0). Source: TRL 1.16 GRPOTrainer (token_truncate); Yao et al. 2025 (TIS).
    """
    if not 0 <= low <= p.tis_cap:
        raise ConfigError(f"tis_two_sided needs 0 <= low <= tis_cap, got low={low}, tis_cap={p.tis_cap}")
    return _masked(torch.exp(log_ratio).clamp(min=low, max=p.tis_cap), mask)


@CORRECTIONS.register("icepop")
@torch.no_grad()
def icepop(log_ratio: Tensor, mask: Tensor, p: CorrectionParams) -> Tensor:
    """IcePop double-sided masking: weight_t = M(k_t), M(k) = k if alpha <= k <= beta else 0, k_t = exp(log_ratio_t).

    alpha = p.icepop_low, beta = p.icepop_high (bounds inclusive), both on k = pi_train / pi_rollout: this is
    verl's rollout_is="token" with rollout_is_threshold "alpha_beta" (its IS path reads the ratio itself, not
    the mirrored k1 statistic of its rejection path) and TRL's token_mask with (clip_min, clip_max).
    Tokens outside are dropped, not truncated.
    Source: Ling Team 2025, "Every Step Evolves: Scaling RL for Trillion-Scale Thinking Model" (Ring-1T,
    arXiv 2510.18855), sec. "IcePop: Discard All Noisy Gradient Updates" (masking function M(k); alpha = 0.5,
    beta = 5 there); Zhao et al. 2025, "Small Leak Can Sink a Great Ship" (IcePop blog).
    """
    keep = _in_ratio_range(log_ratio, p.icepop_low, p.icepop_high)
    ratio = torch.exp(log_ratio)
    return torch.where(keep, ratio, torch.zeros_like(ratio))


def _seq_keep(log_ratio: Tensor, mask: Tensor, low: float, high: float, convention: str) -> Tensor:
    """[B,1] bool: low <= exp(mean_t log_ratio) <= high ("ratio"), or the same bounds on the INVERSE ratio
    ("verl_k1": verl's seq_mean_k1 statistic is log(pi_rollout / pi_train), so "a_b" keeps [1/b, 1/a])."""
    if convention not in ("ratio", "verl_k1"):
        raise ConfigError(f"convention must be 'ratio' or 'verl_k1', got {convention!r}")
    if convention == "verl_k1":
        low, high = (1.0 / high if high > 0 else math.inf), (1.0 / low if low > 0 else math.inf)
    return _in_ratio_range(_row_mean(log_ratio, mask), low, high).unsqueeze(-1)


@CORRECTIONS.register("masked_seq_is")
@torch.no_grad()
def masked_seq_is(log_ratio: Tensor, mask: Tensor, p: CorrectionParams, *, convention: str = "ratio") -> Tensor:
    """Token IS weights, with whole sequences rejected on their geometric-mean ratio.

    rho_b = exp( mean_{t: mask} log_ratio_{b,t} ) (an empty row has rho_b = 1);
    weight_{b,t} = exp(log_ratio_{b,t}) if seq_low <= rho_b <= seq_high, else 0 for every token of row b.
    convention "ratio": the bounds are on rho_b = pi_train / pi_rollout. "verl_k1": verl's rollout_rs
    "seq_mean_k1" with threshold "seq_low_seq_high" (its statistic is log(pi_rollout / pi_train), so the
    kept range is [1/seq_high, 1/seq_low]: "0.8_1.5" keeps rho in [0.667, 1.25]).
    Source: verl `rollout_corr_helper.compute_rollout_rejection_mask` with rollout_rs="geometric" (later
    "seq_mean_k1") times token-level IS; Liu, Li et al. 2025, "When Speed Kills Stability" (geometric RS).
    Unlike verl's preset, the token ratio is not truncated here (compose with tis for that).
    """
    keep = _seq_keep(log_ratio, mask, p.seq_low, p.seq_high, convention)
    ratio = torch.exp(log_ratio)
    return torch.where(keep, ratio, torch.zeros_like(ratio))


@CORRECTIONS.register("geo_rs")
@torch.no_grad()
def geo_rs(log_ratio: Tensor, mask: Tensor, p: CorrectionParams, *, convention: str = "ratio") -> Tensor:
    """Geometric-mean sequence rejection (Geo-RS), no IS: weight_{b,t} = 1[seq_low <= rho_b <= seq_high].

    rho_b = exp(mean_{t: mask} log_ratio_{b,t}) (1 for an empty row); `convention` as in masked_seq_is
    ("verl_k1" = verl's rollout_rs="seq_mean_k1" rejection mask, whose kept range is the mirrored one).
    A kept token has weight exactly 1, so `touched` counts the rejected tokens.
    Source: Liu, Li et al. 2025, "When Speed Kills Stability" (geometric-mean rejection sampling);
    verl rollout_corr_helper.compute_rollout_rejection_mask.
    """
    keep = _seq_keep(log_ratio, mask, p.seq_low, p.seq_high, convention)
    return keep.expand_as(log_ratio).to(log_ratio.dtype)


@CORRECTIONS.register("seq_tis")
@torch.no_grad()
def seq_tis(log_ratio: Tensor, mask: Tensor, p: CorrectionParams, *, mode: str = "truncate") -> Tensor:
    """Sequence-level IS: one weight per sequence from the PRODUCT of its token ratios.

    w_b = exp(sum_{t: mask} log_ratio_{b,t}); mode "truncate": weight_{b,t} = min(w_b, C) m_{b,t} (verl
    rollout_is="sequence" with a single threshold C = p.tis_cap; TRL "sequence_truncate");
    mode "mask": weight = w_b if w_b <= C else 0 (TRL "sequence_mask" with clip_max = C, clip_min None).
    verl clamps the log-sum to [-20, 20] (w <= e^20) before truncating: no difference for C < e^20.
    Unbiased at C = inf, but the variance grows with length. Source: Yao et al. 2025 (TIS, sequence form);
    verl rollout_corr_helper.compute_rollout_correction_weights; TRL 1.16 GRPOTrainer.
    """
    if mode not in ("truncate", "mask"):
        raise ConfigError(f"seq_tis mode must be 'truncate' or 'mask', got {mode!r}")
    lw = _masked(log_ratio, mask).sum(-1, keepdim=True).expand_as(log_ratio)
    if mode == "truncate":
        return _masked(torch.exp(lw).clamp(max=p.tis_cap), mask)
    keep = lw <= math.log(p.tis_cap)
    return _masked(torch.where(keep, torch.exp(lw), torch.zeros_like(lw)), mask)


_RS_ONLY = {"none", "geo_rs"}  # corrections whose untouched weight is 1, not the ratio


def touched(name: str, log_ratio: Tensor, mask: Tensor, p: CorrectionParams, **params) -> Tensor:
    """Bool [B,T]: response tokens (mask > 0) whose correction weight differs from its untouched value.

    The untouched value is the raw token ratio exp(log_ratio) for IS corrections (tis, tis_two_sided, icepop,
    masked_seq_is), 1 for pure rejection (geo_rs) and for "none" (which thus touches nothing), and the
    untruncated sequence ratio for seq_tis. Its mean over the mask is the fraction touched.
    """
    fn = CORRECTIONS.get(name)
    with torch.no_grad():
        w = fn(log_ratio, mask, p, **params)
        if name in _RS_ONLY:
            base = torch.ones_like(log_ratio)
        elif name == "seq_tis":
            base = torch.exp(_masked(log_ratio, mask).sum(-1, keepdim=True)).expand_as(log_ratio)
        else:
            base = torch.exp(log_ratio)
        return (w != base) & (mask > 0)


# ---------------------------------------------------------------------------------------------
# The public decorators (docs/plugins.md): `@advantage("name")` registers fn into ADVANTAGES, etc.
# An entry's keyword-only arguments (after `*`) are its parameters, set by `--set algo.advantage.k=4`.
# ---------------------------------------------------------------------------------------------

advantage = ADVANTAGES.register
policy_loss = POLICY_LOSSES.register
aggregation = AGGREGATIONS.register
kl_estimator = KL_ESTIMATORS.register
correction = CORRECTIONS.register


# ---------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits
# ---------------------------------------------------------------------------------------------


def gather_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """log pi(ids | s) = log_softmax(logits)[..., ids]: logits [B,T,V], ids [B,T] (long) -> [B,T].

    log_softmax runs in the logits' own dtype (no upcast), so bf16 logits give bf16 log-probs as an
    inference engine would.
    """
    return torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H(softmax(z)) = -sum_v p_v log p_v over the last dim: [..., V] -> [...], differentiable.

    Logits of -inf (banned tokens) contribute 0 (0 log 0 = 0) with a finite gradient.
    """
    logp = torch.log_softmax(logits, dim=-1)
    finite_logp = torch.where(torch.isfinite(logp), logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    return -(logp.exp() * finite_logp).sum(-1)


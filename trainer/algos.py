"""Loss-side registries: advantages, policy losses, loss aggregation, KL estimators, off-policy corrections.

Every entry is a small pure tensor function with one signature per registry (docs/architecture.md,
"Extension points"); the trainer composes them, the probes and predictors read the same formulas.

    ADVANTAGES      fn(rewards[N, G]) -> adv[N, G]                       N prompts, G samples per prompt
    POLICY_LOSSES   fn(logp[B,T], old_logp[B,T], adv[B,T], mask[B,T], p: PolicyLossParams) -> loss[B,T]
    AGGREGATIONS    fn(per_token[B,T], mask[B,T], norm_const: float) -> scalar
    KL_ESTIMATORS   fn(logp[B,T], ref_logp[B,T], full_logp[B,T,V] | None, full_ref_logp[B,T,V] | None) -> [B,T]
    CORRECTIONS     fn(log_ratio[B,T], mask[B,T], p: CorrectionParams) -> weight[B,T]   (no grad)

`mask` is float 0/1 over response tokens. A per-token loss may hold anything at masked positions;
the aggregation drops them (`torch.where`, so even a non-finite value there cannot leak in).

Left out on purpose: value functions and GAE (no critic; advantages are group baselines), where the
KL enters (reward or loss: the trainer's choice), coefficients (KL beta, entropy bonus), and every
metric (probes compute metrics from the step context; losses return only the loss).
Nothing is clamped silently: verl clamps k3 to [-10, 10] and log-ratios to [-20, 20]; we do not.
The clipping and truncation below are the declared formulas, and `touched` exposes what a
correction changed so a probe can count it.

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

__all__ = [
    "ADVANTAGES", "POLICY_LOSSES", "AGGREGATIONS", "KL_ESTIMATORS", "CORRECTIONS",
    "PolicyLossParams", "CorrectionParams",
    "token_weights", "touched", "gather_logprobs", "entropy_from_logits",
    "advantage", "policy_loss", "aggregation", "kl_estimator", "correction",
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


@ADVANTAGES.register("grpo")
def grpo(rewards: Tensor) -> Tensor:
    """GRPO group-normalized advantage.

    A_{n,i} = (r_{n,i} - mean_g r_n) / (std_g r_n + 1e-6), std the population std (correction=0):
    std_g = sqrt(1/G sum_i (r_i - mean)^2); for binary rewards with success rate p, std_g = sqrt(p(1-p)).
    rewards: [N, G]; returns [N, G]. An all-equal group gives 0.

    Source: Shao et al. 2024, DeepSeekMath, sec. 4.1.2 (outcome supervision: A_i = (r_i - mean(r)) / std(r)).
    TRL and verl use the unbiased std (correction=1), which makes their advantages smaller by the
    constant factor sqrt((G-1)/G) (ours = theirs * sqrt(G/(G-1))).
    """
    r = _rewards(rewards)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, correction=0)
    return _group_centered(r, r - mean) / (std + GRPO_STD_EPS)


@ADVANTAGES.register("rloo")
def rloo(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out baseline.

    A_{n,i} = r_{n,i} - 1/(G-1) sum_{j != i} r_{n,j}  =  G/(G-1) (r_{n,i} - mean_g r_n).
    rewards: [N, G] with G >= 2; returns [N, G]. Sums to 0 in every group.

    Source: Kool, van Hoof, Welling 2019, "Buy 4 REINFORCE samples, get a baseline for free!";
    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE-style optimization ... in LLMs", sec. 3 (RLOO).
    """
    r = _rewards(rewards)
    G = r.shape[1]
    if G < 2:
        raise ValueError(f"rloo needs at least 2 samples per prompt (leave-one-out), got group size G={G}")
    loo_mean = (r.sum(dim=1, keepdim=True) - r) / (G - 1)
    return _group_centered(r, r - loo_mean)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: Tensor) -> Tensor:
    """Dr. GRPO advantage: A_{n,i} = r_{n,i} - mean_g r_n (GRPO without the std division).

    rewards: [N, G]; returns [N, G].
    Source: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective", sec. 3.2
    (Dr. GRPO drops the 1/std(r) question-difficulty bias; its 1/|o_i| length bias is the aggregation's job).
    """
    r = _rewards(rewards)
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
    clip-higher, Yu et al. 2025, sec. 3.1.
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
    An empty row has s_b = 1. Source: Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 5-7, sec. 4.3.
    """
    seq_log_ratio = _row_mean((logp - old_logp).detach(), mask)  # [B]
    ratio = torch.exp(seq_log_ratio.unsqueeze(-1) + logp - logp.detach())  # [B,T], value s_b
    return _clipped_surrogate(ratio, adv, p)


# ---------------------------------------------------------------------------------------------
# Loss aggregation: fn(per_token[B,T], mask[B,T], norm_const) -> scalar
# ---------------------------------------------------------------------------------------------

AggregationFn = Callable[[Tensor, Tensor, float], Tensor]
AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation", field="algo.loss_agg")


@AGGREGATIONS.register("token-mean")
def token_mean(per_token: Tensor, mask: Tensor, norm_const: float) -> Tensor:
    """L = sum_{b,t} l m / sum_{b,t} m: every response token weighs the same (0 for an all-empty batch).

    norm_const is unused. Source: Yu et al. 2025, DAPO, sec. 3.3 (token-level policy gradient loss).
    """
    return _safe_div(_masked(per_token, mask).sum(), mask.sum())


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(per_token: Tensor, mask: Tensor, norm_const: float) -> Tensor:
    """L = 1/B sum_b ( sum_t l m / sum_t m ): each sequence weighs 1/B, split over its tokens.

    B counts every row; an empty row contributes 0. norm_const is unused.
    Source: Shao et al. 2024, DeepSeekMath, eq. 3 (the GRPO objective's 1/G sum_i 1/|o_i| sum_t).
    """
    return _row_mean(per_token, mask).mean()


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(per_token: Tensor, mask: Tensor, norm_const: float) -> Tensor:
    """L = 1/B sum_b sum_t l m: every token weighs 1/B, so long sequences weigh more. norm_const is unused.

    Source: the sum-over-tokens REINFORCE estimator (Williams 1992) averaged over sequences; verl `agg_loss`.
    """
    return _masked(per_token, mask).sum(-1).mean()


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(per_token: Tensor, mask: Tensor, norm_const: float) -> Tensor:
    """L = sum_{b,t} l m / (B * norm_const), norm_const a constant (Dr. GRPO: the max response length).

    Every token weighs 1/(B * norm_const) whatever the lengths in the batch.
    Source: Liu et al. 2025, Dr. GRPO, sec. 3.2 (replace 1/|o_i| by a constant).
    """
    if not norm_const > 0:
        raise ValueError(f"seq-mean-token-sum-norm needs norm_const > 0 (the max response length), got {norm_const}")
    return _masked(per_token, mask).sum() / (per_token.shape[0] * norm_const)


# d L / d l_{b,t} for each aggregation, written out in closed form (tests hold them against autograd).
_TOKEN_WEIGHTS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "token-mean": lambda m, c: _safe_div(m, m.sum()),
    "seq-mean-token-mean": lambda m, c: _safe_div(m, m.sum(-1, keepdim=True)) / m.shape[0],
    "seq-mean-token-sum": lambda m, c: m / m.shape[0],
    "seq-mean-token-sum-norm": lambda m, c: m / (m.shape[0] * c),
}


def token_weights(agg_name: str, mask: Tensor, norm_const: float) -> Tensor:
    """w_{b,t} = d L / d l_{b,t} for aggregation `agg_name`: [B,T], 0 at masked tokens and in empty rows.

    Every aggregation here is linear in the per-token loss, so L = sum_{b,t} w_{b,t} l_{b,t} exactly.
    token-mean: m / sum m;  seq-mean-token-mean: m / (B sum_t m);  seq-mean-token-sum: m / B;
    seq-mean-token-sum-norm: m / (B norm_const).
    """
    AGGREGATIONS.check(agg_name)
    if agg_name not in _TOKEN_WEIGHTS:
        raise ValueError(f"no closed-form token weights for loss aggregation {agg_name!r}")
    if agg_name == "seq-mean-token-sum-norm" and not norm_const > 0:
        raise ValueError(f"seq-mean-token-sum-norm needs norm_const > 0, got {norm_const}")
    return _TOKEN_WEIGHTS[agg_name](mask, norm_const)


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
    """Truncated importance sampling: weight_t = min(exp(log_ratio_t), C), C = p.tis_cap.

    Source: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"
    (blog, fengyao.notion.site/off-policy-rl); truncation as in Espeholt et al. 2018, IMPALA, eq. 1 (rho-bar).
    """
    return torch.exp(log_ratio).clamp(max=p.tis_cap)


@CORRECTIONS.register("icepop")
@torch.no_grad()
def icepop(log_ratio: Tensor, mask: Tensor, p: CorrectionParams) -> Tensor:
    """IcePop double-sided masking: weight_t = M(k_t), M(k) = k if alpha <= k <= beta else 0, k_t = exp(log_ratio_t).

    alpha = p.icepop_low, beta = p.icepop_high (bounds inclusive). Tokens outside are dropped, not truncated.
    Source: Ling Team 2025, "Every Step Evolves: Scaling RL for Trillion-Scale Thinking Model" (Ring-1T,
    arXiv 2510.18855), sec. "IcePop: Discard All Noisy Gradient Updates" (masking function M(k); alpha = 0.5,
    beta = 5 there); Zhao et al. 2025, "Small Leak Can Sink a Great Ship" (IcePop blog).
    """
    keep = _in_ratio_range(log_ratio, p.icepop_low, p.icepop_high)
    ratio = torch.exp(log_ratio)
    return torch.where(keep, ratio, torch.zeros_like(ratio))


@CORRECTIONS.register("masked_seq_is")
@torch.no_grad()
def masked_seq_is(log_ratio: Tensor, mask: Tensor, p: CorrectionParams) -> Tensor:
    """Token IS weights, with whole sequences rejected on their geometric-mean ratio.

    rho_b = exp( mean_{t: mask} log_ratio_{b,t} ) (an empty row has rho_b = 1);
    weight_{b,t} = exp(log_ratio_{b,t}) if seq_low <= rho_b <= seq_high, else 0 for every token of row b.
    Source: verl `rollout_corr_helper.compute_rollout_rejection_mask` with rollout_rs="geometric" (later
    "seq_mean_k1") times token-level IS; Liu, Li et al. 2025, "When Speed Kills Stability" (geometric RS).
    Unlike verl's preset, the token ratio is not truncated here (compose with tis for that).
    """
    keep = _in_ratio_range(_row_mean(log_ratio, mask), p.seq_low, p.seq_high).unsqueeze(-1)  # [B,1]: log rho_b
    ratio = torch.exp(log_ratio)
    return torch.where(keep, ratio, torch.zeros_like(ratio))


def touched(name: str, log_ratio: Tensor, mask: Tensor, p: CorrectionParams, **params) -> Tensor:
    """Bool [B,T]: response tokens (mask > 0) whose correction weight differs from the raw ratio exp(log_ratio).

    That is the tokens a correction truncated or masked; its mean over the mask is the fraction touched.
    "none" applies no ratio at all, so it touches nothing (rather than "every token with ratio != 1").
    """
    fn = CORRECTIONS.get(name)
    if name == "none":
        return torch.zeros_like(mask, dtype=torch.bool)
    with torch.no_grad():
        return (fn(log_ratio, mask, p, **params) != torch.exp(log_ratio)) & (mask > 0)


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


"""Reward transforms and token weightings: two registries the trainer applies between grading and the loss.

Where they act in a step (trainer/loop.py, `_prepare`):

    correct (graded 0/1) -> reward transforms, in order -> rewards r   [S]
    r -> advantage estimator (algos.ADVANTAGES) -> A                  [S]
    token weighting -> TokenWeights(seq, keep, token):
        A_i      <- A_i * seq_i          the advantage the loss and the probes see
        mask_it  <- mask_it * keep_it    0/1: which tokens enter the loss (the aggregation's normalizer sees it)
        w_it     <- w_it * token_it      the token's PG-loss weight, next to the off-policy correction
                                         (the normalizer does not see it; the KL and entropy terms neither)

One signature per registry (docs/plugins.md):
  REWARD_TRANSFORMS:  fn(rewards [S], batch: ShapingBatch, *, <params>) -> rewards [S]
  TOKEN_WEIGHTINGS:   fn(batch: ShapingBatch, *, <params>) -> TokenWeights
An entry's parameters are its keyword-only arguments (typed int/float/bool/str, with defaults).

Config: the older fields select and parametrize built-ins, applied first and in this order, so their
runs keep their metrics bit for bit: algo.length_penalty -> `length_penalty`, algo.kl_coef with
kl_placement='reward' -> `kl_penalty`; algo.hard_prompt_weight -> `hard_prompt`, algo.token_filter=
'top_entropy' -> `top_entropy`. Then the entries named by algo.reward_transforms (a comma list) and
algo.token_weighting (one name) run with their parameters (`entry_params`).

Left out: per-token rewards (a transform returns one reward per sequence; token credit is the
weighting's job) and transforms that change the batch (filtering prompts out).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from solidrl.theory.registry import Registry

from . import algos
from .config import ConfigError, TrainConfig


@dataclass(frozen=True)
class ShapingBatch:
    """What a reward transform or a token weighting sees (detached; S sequences, R response slots, V vocab)."""

    correct: Tensor                # [S] float 0/1, the grader's verdict (truncated = 0)
    lengths: Tensor                # [S] long, response lengths in tokens
    response_ids: Tensor           # [S, R] long
    mask: Tensor                   # [S, R] float, 1 on response tokens
    group_size: int                # G: rows i*G .. i*G+G-1 share one prompt
    budget: int                    # max_new_tokens
    old_logits: Tensor             # [S, R, V] pi_old on the batch
    old_logp: Tensor               # [S, R] log pi_old(a_t)
    ref_logits: Optional[Tensor]   # [S, R, V] pi_ref, when the step computes it (algo.kl_coef > 0)
    kl_estimator: str              # algo.kl_estimator

    @property
    def positions(self) -> Tensor:
        """[S, R] long: each token's 0-based position within its response."""
        return torch.arange(self.mask.shape[1], device=self.mask.device).expand_as(self.response_ids)


class TokenWeights(NamedTuple):
    """A token weighting's output; None = leave that factor alone (see the module docstring)."""

    seq: Optional[Tensor] = None    # [S]    multiplies each sequence's advantage
    keep: Optional[Tensor] = None   # [S, R] 0/1, multiplies the loss mask
    token: Optional[Tensor] = None  # [S, R] multiplies each token's PG-loss term


RewardTransform = Callable[..., Tensor]
TokenWeighting = Callable[..., TokenWeights]
REWARD_TRANSFORMS: Registry[RewardTransform] = Registry("reward transform", field="algo.reward_transforms")
TOKEN_WEIGHTINGS: Registry[TokenWeighting] = Registry("token weighting", field="algo.token_weighting")


def entry_params(cfg: TrainConfig, field: str, name: str) -> dict[str, Any]:
    """The parameters set for entry `name` of `field` (the plugins' `--set field.param=value`); {} = defaults.

    TrainConfig.entry_params comes with the plugin plumbing (docs/plugins.md); it keys parameters by
    field, so a comma list (algo.reward_transforms) gets them only when it names one entry.
    """
    get = getattr(cfg, "entry_params", None)
    sec, fld = field.split(".")
    if get is None or getattr(getattr(cfg, sec), fld) != name:
        return {}
    return dict(get(field))


# ----------------------------------------------------------------------------------------------
# reward transforms
# ----------------------------------------------------------------------------------------------

@REWARD_TRANSFORMS.register("length_penalty")
def length_penalty(rewards: Tensor, b: ShapingBatch, *, coef: float = 0.0) -> Tensor:
    """r_i - coef * |o_i| / budget: a penalty linear in the response length (|o_i| tokens).

    The budget normalizes it to [0, coef]; a common shaping term (e.g. Kimi k1.5, arXiv:2501.12599 §2.3.3,
    uses a group-relative variant). Selected by algo.length_penalty.
    """
    return rewards - coef * b.lengths / b.budget


@REWARD_TRANSFORMS.register("kl_penalty")
def kl_penalty(rewards: Tensor, b: ShapingBatch, *, coef: float = 0.0) -> Tensor:
    """r_i - coef * sum_t k(pi_old, pi_ref)_it: the KL to the reference subtracted from the reward.

    k is algo.kl_estimator per token (k1/k2/k3/exact, algos.KL_ESTIMATORS), summed over the
    response: the InstructGPT/PPO-RLHF placement (Ouyang et al. 2022, eq. 2; Ziegler et al. 2019
    §2). Selected by algo.kl_coef > 0 with algo.kl_placement = 'reward' (coef = algo.kl_coef, or the
    step controller's value). Needs the reference forward (ref_logits).
    """
    if b.ref_logits is None:
        raise ConfigError("reward transform kl_penalty needs the reference forward: set algo.kl_coef > 0")
    ref_lp = algos.gather_logprobs(b.ref_logits.float(), b.response_ids)
    kl_tok = algos.KL_ESTIMATORS.get(b.kl_estimator)(
        b.old_logp, ref_lp, torch.log_softmax(b.old_logits, -1), torch.log_softmax(b.ref_logits, -1))
    return rewards - coef * (kl_tok * b.mask).sum(-1)


@REWARD_TRANSFORMS.register("pass_at_k")
def pass_at_k(rewards: Tensor, b: ShapingBatch, *, k: int = 1) -> Tensor:
    """Group pass@k reward: r'_i = max_{j in B(i)} r_j, B(i) the block of k samples holding i.

    Each prompt's G samples are cut, in order, into G/k disjoint blocks of k; every sample gets its
    block's best reward, so with 0/1 rewards r'_i = 1 iff any of the k samples of its block is correct.
    This is Pass@k Training with full sampling (Chen et al. 2025, "Pass@k Training for Adaptively
    Balancing Exploration and Exploitation of Large Reasoning Models", arXiv:2508.10751, §3.1).
    k = 1 is the identity; k must divide algo group size G (rollout.group_size).
    """
    S, G = rewards.shape[0], b.group_size
    if k < 1 or G % k:
        raise ConfigError(f"reward transform pass_at_k: k={k} must be >= 1 and divide rollout.group_size={G}")
    blocks = rewards.view(S // k, k)
    return blocks.max(-1, keepdim=True).values.expand(-1, k).reshape(S)


# ----------------------------------------------------------------------------------------------
# token weightings
# ----------------------------------------------------------------------------------------------

@TOKEN_WEIGHTINGS.register("none")
def no_weighting(b: ShapingBatch) -> TokenWeights:
    """Every token as it is (the perfect baseline)."""
    return TokenWeights()


@TOKEN_WEIGHTINGS.register("hard_prompt")
def hard_prompt(b: ShapingBatch, *, weight: float = 1.0) -> TokenWeights:
    """A_i * weight for sequences whose prompt's group accuracy mean_j correct_j < 0.5, A_i otherwise.

    A sense-driven knob for hypotheses (more gradient on prompts the policy mostly fails); selected by
    algo.hard_prompt_weight != 1.
    """
    S, G = b.correct.shape[0], b.group_size
    hard = b.correct.view(S // G, G).mean(-1, keepdim=True).expand(-1, G).reshape(S) < 0.5
    return TokenWeights(seq=torch.where(hard, weight, 1.0).to(b.correct.dtype))


@TOKEN_WEIGHTINGS.register("top_entropy")
def top_entropy(b: ShapingBatch, *, frac: float = 0.2) -> TokenWeights:
    """keep_it = [H_it >= q_{1-frac}(H)]: only the top `frac` of response tokens by pi_old's entropy.

    H_it = -sum_v pi_old(v) log pi_old(v); the quantile is over all response tokens of the batch
    (Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for
    LLM Reasoning", arXiv:2506.01939, §4: the top 20%). Selected by algo.token_filter = 'top_entropy'.
    """
    ent = algos.entropy_from_logits(b.old_logits)
    thresh = torch.quantile(ent[b.mask > 0], 1.0 - frac)
    return TokenWeights(keep=(ent >= thresh).float())


@TOKEN_WEIGHTINGS.register("token_id")
def token_id(b: ShapingBatch, *, token_id: int = -1, weight: float = 1.0) -> TokenWeights:
    """token_it = weight where a_it = token_id, else 1: extra PG weight on chosen tokens (e.g. 'thinking' ones).

    The normalizer is unchanged, so with token-mean the PG gradient of those tokens scales by `weight`
    and the rest's stays as it is. token_id = -1 matches nothing.
    """
    return TokenWeights(token=torch.where(b.response_ids == token_id, weight, 1.0).to(b.mask.dtype))


@TOKEN_WEIGHTINGS.register("position")
def position(b: ShapingBatch, *, start: int = 0, end: int = 0, weight: float = 1.0) -> TokenWeights:
    """token_it = weight for response positions start <= t < end (end = 0: to the end), else 1."""
    t = b.positions
    inside = (t >= start) & ((t < end) if end > 0 else torch.ones_like(t, dtype=torch.bool))
    return TokenWeights(token=torch.where(inside, weight, 1.0).to(b.mask.dtype))


# ----------------------------------------------------------------------------------------------
# what a step applies
# ----------------------------------------------------------------------------------------------

def reward_transform_names(cfg: TrainConfig) -> list[str]:
    """The names in algo.reward_transforms, in order ('' = none)."""
    return [n.strip() for n in cfg.algo.reward_transforms.split(",") if n.strip()]


def shape_rewards(cfg: TrainConfig, rewards: Tensor, b: ShapingBatch) -> Tensor:
    """rewards after the built-ins the older fields select, then algo.reward_transforms in order."""
    a = cfg.algo
    if a.length_penalty:
        rewards = length_penalty(rewards, b, coef=a.length_penalty)
    if a.kl_coef > 0 and a.kl_placement == "reward":
        rewards = kl_penalty(rewards, b, coef=a.kl_coef)
    for name in reward_transform_names(cfg):
        rewards = REWARD_TRANSFORMS.get(name)(rewards, b, **entry_params(cfg, "algo.reward_transforms", name))
    return rewards


def _combine(x: Optional[Tensor], y: Optional[Tensor]) -> Optional[Tensor]:
    return y if x is None else x if y is None else x * y


def weigh_tokens(cfg: TrainConfig, b: ShapingBatch) -> TokenWeights:
    """The product of the built-ins the older fields select and algo.token_weighting's entry."""
    a = cfg.algo
    parts = []
    if a.hard_prompt_weight != 1.0:
        parts.append(hard_prompt(b, weight=a.hard_prompt_weight))
    if a.token_filter == "top_entropy":
        parts.append(top_entropy(b, frac=a.token_filter_frac))
    if a.token_weighting != "none":
        parts.append(TOKEN_WEIGHTINGS.get(a.token_weighting)(
            b, **entry_params(cfg, "algo.token_weighting", a.token_weighting)))
    out = TokenWeights()
    for p in parts:
        out = TokenWeights(*(_combine(x, y) for x, y in zip(out, p)))
    return out

"""What a step's hooks see (StepContext) and where a counterfactual step starts (StepFrom).

The loop (trainer/loop.py) builds one StepContext per step in its prepare phase and fills the
per-update fields before each after_backward; docs/contracts.md lists what probes may rely on. The
loss and correction parameters are read from the config the step runs with (ctx.cfg), never cached.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from . import algos
from .config import ConfigError, TrainConfig
from .rollout import Rollout
from .tasks import Problem

__all__ = ["StepContext", "StepFrom", "policy_loss_params", "correction_params"]


@dataclass
class StepContext:
    """Everything a probe may want at a hook point. Tensors are detached unless noted."""

    step: int
    cfg: TrainConfig
    trainer: Any                     # the Trainer (trainer/loop.py) running this step
    problems: list[Problem]          # [S], each prompt repeated group_size times
    rollout: Rollout
    texts: list[str]                 # decoded responses [S]
    correct: torch.Tensor            # [S] float 0/1 (truncated = 0)
    rewards: torch.Tensor            # [S] float, after length penalty / KL-in-reward
    advantages: torch.Tensor         # [S] sequence advantages (after hard-prompt weighting)
    mask: torch.Tensor               # [S, R] float, tokens that enter the loss
    old_logits: torch.Tensor         # [S, R, V] pi_old (policy before this step's update) on the batch
    old_logp: torch.Tensor           # [S, R] log pi_old(a_t)
    weights: torch.Tensor            # [S, R] off-policy correction x token weighting's per-token weight
    ref_logits: Optional[torch.Tensor] = None  # [S, R, V] frozen reference, when the trainer computed it
    version: int = 0                 # optimizer updates before this step: the version of pi_old
    optimizer: Optional[torch.optim.Optimizer] = None  # the optimizer this step updates with (default: trainer's)
    # per update (mini-batch); set before after_backward
    update: int = 0
    index: Optional[torch.Tensor] = None      # rows of the batch in this update
    logits: Optional[torch.Tensor] = None     # [s, R, V] detached logits of this update's forward
    logp: Optional[torch.Tensor] = None       # [s, R] (non-leaf; .grad holds d loss / d logp after backward)
    loss: Optional[torch.Tensor] = None
    loss_parts: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_norm: float = float("nan")
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer is None:  # e.g. the TRL bridge's facade, which carries an optimizer of its own
            self.optimizer = getattr(self.trainer, "optimizer", None)

    @property
    def token_version(self) -> Optional[torch.Tensor]:
        """[S, R] long: the optimizer-update count of the weights that sampled each response token
        (version - token_version is its lag; > 0 under staleness and partial rollouts)."""
        return self.rollout.token_version

    @property
    def model(self):
        return self.trainer.model

    @property
    def ref_model(self):
        return self.trainer.ref_model

    @property
    def loss_params(self) -> algos.PolicyLossParams:
        return policy_loss_params(self.cfg)

    @property
    def corr_params(self) -> algos.CorrectionParams:
        return correction_params(self.cfg)


@dataclass
class StepFrom:
    """Where a counterfactual step starts (Trainer.counterfactual_step).

    weights: a model state_dict; optimizer: an optimizer state_dict of kind `optimizer_name` (None:
    a fresh optimizer, the step is its first); version: optimizer updates behind these weights (the
    tokens' lag is measured from it); engine: the rollout engine's state (off-policy engines with
    their own snapshots); controller: the state of a step controller named controller_name (used
    when the step's config names the same one; otherwise its controller starts fresh).
    """

    weights: dict[str, torch.Tensor]
    optimizer: Optional[dict] = None
    optimizer_name: str = "adamw"
    version: int = 0
    engine: Optional[dict] = None
    controller: Optional[dict] = None
    controller_name: str = "none"

    @classmethod
    def of(cls, t: Any, optimizer: bool = True) -> "StepFrom":
        """A copy of trainer t's current state (optimizer=False: without its moments)."""
        return cls({k: v.detach().clone() for k, v in t.model.state_dict().items()},
                   copy.deepcopy(t.optimizer.state_dict()) if optimizer else None, t.cfg.optim.name,
                   t.version, copy.deepcopy(t.engine.state_dict()) if t.engine.separate else None,
                   t.controller.state_dict() if t.controller else None, t.cfg.algo.controller)


def policy_loss_params(cfg: TrainConfig) -> algos.PolicyLossParams:
    """The policy loss's clip settings, read from the config the step runs with."""
    try:
        return algos.PolicyLossParams(cfg.algo.eps_low, cfg.algo.eps_high, cfg.algo.dual_clip_c)
    except ValueError as e:
        raise ConfigError(f"algo settings: {e}") from None


def correction_params(cfg: TrainConfig) -> algos.CorrectionParams:
    """The off-policy correction's caps and ranges, read from the config the step runs with."""
    op = cfg.offpolicy
    try:
        return algos.CorrectionParams(op.tis_cap, op.icepop_low, op.icepop_high, op.seq_low, op.seq_high)
    except ValueError as e:
        raise ConfigError(f"offpolicy settings: {e}") from None



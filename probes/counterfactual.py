"""Counterfactual steps from one fixed start: many single optimizer steps, each from the same weights.

A counterfactual step is the step a config would take from given weights on a given batch
(`Trainer.counterfactual_step`, trainer/loop.py); this module and probe-check's shadow arms
(probes/check/run.py, `Shadow`) are both made of them, and nothing else in solidrl is called so.

`CounterfactualSteps(trainer)` remembers the trainer's weights when it is made. Every
`step(batch, ...)` is a counterfactual step from them with a fresh optimizer (so each update is the
first step of a new optimizer, e.g. Adam's sign-like first step), with the trainer's hooks attached
(the probes' recorder, typically). Batch `b` is the trainer's rollout for step `b`, sampled once from
the remembered weights and reused by every later call, so two calls with the same `batch` and
different learning rates or advantage estimators are an exact A/B: same weights, same tokens
(`fingerprint` checks it). The version of every step is the trainer's when this object was made.

This is what the transfer table (probes/commands/transfer.py) is made of. probe-check's shadow arms
follow a baseline *trajectory* instead: one counterfactual step from each of the baseline's states.

Left out: learning-rate schedules and optimizer state carried across steps (a step here is always a
first step), and off-policy engines with their own weights (staleness, low-precision rollouts).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Optional

import torch

from solidrl.trainer.config import apply_overrides
from solidrl.trainer.loop import StepFrom, Trainer
from solidrl.trainer.rollout import Rollout

__all__ = ["CounterfactualSteps", "fingerprint"]


def fingerprint(ro: Rollout) -> str:
    """A short hash of a batch's prompt and response tokens."""
    h = hashlib.sha1()
    for x in (ro.prompt_ids, ro.response_ids):
        h.update(x.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class CounterfactualSteps:
    """Counterfactual steps from the trainer's weights at construction, on cached batches (module docstring)."""

    def __init__(self, trainer: Trainer):
        if trainer.engine.separate:
            raise ValueError("CounterfactualSteps needs the on-policy rollout engine "
                             "(offpolicy.staleness = 0, rollout_dtype = float32)")
        self.trainer = trainer
        self.start = StepFrom.of(trainer, optimizer=False)
        self.batches: dict[int, Rollout] = {}

    def reset(self) -> None:
        """The remembered weights back in the model."""
        with torch.no_grad():
            self.trainer.model.load_state_dict(self.start.weights)

    def step(self, batch: int, lr: Optional[float] = None, overrides: Optional[dict[str, Any]] = None,
             hooks: bool = True) -> dict[str, Any]:
        """One counterfactual step on batch `batch` from the remembered weights; returns its metrics row.

        lr: this step's learning rate (default: the config's); overrides: dotted config fields for this
        step only (e.g. {'algo.advantage': 'rloo'}; anything that changes sampling is refused);
        hooks=False runs the step without the attached hooks (cheap arms that need only the loop's row).
        The model is left with the updated weights (call `reset()` to undo) so hooks or callers may
        inspect them.
        """
        cfg = self.trainer.cfg
        if overrides:
            bad = [k for k in overrides if k.split(".")[0] in ("model", "task", "rollout", "run", "offpolicy")]
            if bad:
                raise ValueError(f"counterfactual step overrides may not change sampling or the run: {', '.join(bad)}")
            cfg = apply_overrides(cfg, overrides)
        if lr is not None:
            cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr))
        ctx = self.trainer.counterfactual_step(cfg, batch, self.start, self.batches.get(batch), hooks=hooks)
        self.batches.setdefault(batch, ctx.rollout)
        return ctx.metrics

"""Counterfactual one-step updates: many single optimizer steps, each from the same weights.

`OneStep(trainer)` remembers the trainer's weights when it is made. Every `step(batch, ...)` first
puts them back and clears the optimizer's state (so each update is the first step of a fresh
optimizer, e.g. Adam's sign-like first step), then runs the trainer's own `train_step(batch)` with
whatever hooks are attached (the probes' recorder, typically). Batch `b` is the trainer's rollout
for step `b`, sampled once from the remembered weights and reused by every later call, so two
calls with the same `batch` and different learning rates or advantage estimators are an exact
A/B: same weights, same tokens (`fingerprint` checks it).

This is what the transfer table (probes/commands/transfer.py) is made of. probe-check's counterfactual
pairs (probes/check/run.py, `Shadow`) are different: they follow a baseline *trajectory*, syncing a
second trainer to it before each step; here the weights never move.

Left out: learning-rate schedules and optimizer state carried across steps (a counterfactual step
is always a first step), and off-policy engines with their own weights (staleness, low-precision
rollouts: their sampler is not reset).
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional

import torch

from solidrl.trainer.config import apply_overrides
from solidrl.trainer.loop import HOOK_POINTS, Trainer
from solidrl.trainer.rollout import Rollout

__all__ = ["OneStep", "fingerprint"]


def fingerprint(ro: Rollout) -> str:
    """A short hash of a batch's prompt and response tokens."""
    h = hashlib.sha1()
    for x in (ro.prompt_ids, ro.response_ids):
        h.update(x.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class OneStep:
    """Single optimizer steps from fixed weights on cached rollout batches (see module docstring)."""

    def __init__(self, trainer: Trainer):
        if trainer.engine.separate:
            raise ValueError("OneStep needs the on-policy rollout engine (offpolicy.staleness = 0, rollout_dtype = float32)")
        self.trainer = trainer
        self.weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self.batches: dict[int, Rollout] = {}
        self._sample: Callable = trainer.rollout
        trainer.rollout = self._cached_rollout  # instance attribute: this trainer only

    def _cached_rollout(self, problems, step: int) -> Rollout:
        if step not in self.batches:
            self.reset()
            self.batches[step] = self._sample(problems, step)
        return self.batches[step]

    def reset(self) -> None:
        """The remembered weights back in the model, a fresh optimizer state."""
        t = self.trainer
        with torch.no_grad():
            t.model.load_state_dict(self.weights)
        t.optimizer.state.clear()
        t.optimizer.zero_grad(set_to_none=True)

    def step(self, batch: int, lr: Optional[float] = None, overrides: Optional[dict[str, Any]] = None,
             hooks: bool = True) -> dict[str, Any]:
        """One update on batch `batch` from the remembered weights; returns the trainer's metrics row.

        lr: this step's learning rate (default: the config's); overrides: dotted config fields for this
        step only (e.g. {'algo.advantage': 'rloo'}; anything that changes sampling is refused);
        hooks=False runs the step without the attached hooks (cheap arms that need only the loop's row).
        The model is left with the updated weights (call `reset()` to undo) so hooks or callers may
        inspect them.
        """
        t = self.trainer
        cfg0, hooks0 = t.cfg, t.hooks
        if overrides:
            bad = [k for k in overrides if k.split(".")[0] in ("model", "task", "rollout", "run", "offpolicy")]
            if bad:
                raise ValueError(f"OneStep overrides may not change sampling or the run: {', '.join(bad)}")
            t.cfg = apply_overrides(cfg0, overrides)
        if not hooks:
            t.hooks = {p: [] for p in HOOK_POINTS}
        self.reset()
        for g in t.optimizer.param_groups:
            g["lr"] = cfg0.optim.lr if lr is None else lr
        try:
            return t.train_step(batch)
        finally:
            t.cfg, t.hooks = cfg0, hooks0
            for g in t.optimizer.param_groups:
                g["lr"] = cfg0.optim.lr

"""Collapse detection: has the run broken down for good, and why.

A run has collapsed when one of these holds (thresholds in RunConfig; each off at its default):

  kind           criterion                                                               threshold
  reward         reward/mean < floor for `patience` consecutive steps                    collapse_reward_floor
  entropy_high   entropy/token_mean > frac * log(V) for `patience` steps (near-uniform)  collapse_entropy_high
  entropy_low    entropy/token_mean < nats for `patience` steps (deterministic policy)   collapse_entropy_low
  kl_jump        kl/step > factor * median(kl/step of the earlier steps), >= 3 of them    collapse_kl_jump
  nan            reward/mean, loss, grad/norm, entropy/token_mean or kl/step non-finite   always on

The loop's own guard (non-finite logits, loss or gradient norm) stops a step before its row exists;
the loop records that as kind `nan` too (loop.py). The detector is pure: rows in, (kind, reason) out.
The loop runs it on each row after the step_end hooks (so it sees the probes' keys), writes
`collapse/kind` and `collapse/reason` into that row, stops, and puts both in status.json.

Entropy comes from the row (the probes' `entropy/token_mean`); without probes the loop passes the
token-mean entropy of pi_old on the loss tokens. kl/step exists only with the probes' `step` group;
without it the kl_jump criterion cannot fire (it is never guessed).

Left out: accuracy-based criteria separate from reward (reward = accuracy unless a length penalty or
KL-in-reward is on), and any "recovering" logic: a collapse stops the run.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from .config import RunConfig

FINITE_KEYS = ("reward/mean", "loss", "grad/norm", "entropy/token_mean", "kl/step")
KL_HISTORY_MIN = 3
"""kl_jump needs this many earlier kl/step values: the median of fewer is not a baseline."""


class CollapseDetector:
    """Feed every row in step order to `check`; it returns (kind, reason) on the step the run collapses."""

    def __init__(self, run: RunConfig, vocab_size: int):
        self.run = run
        self.log_v = math.log(vocab_size)
        self.streak = {"reward": 0, "entropy_high": 0, "entropy_low": 0}
        self.kl_history: list[float] = []

    @property
    def needs_entropy(self) -> bool:
        return self.run.collapse_entropy_high > 0 or self.run.collapse_entropy_low > 0

    def _sustained(self, kind: str, hit: bool) -> bool:
        self.streak[kind] = self.streak[kind] + 1 if hit else 0
        return self.streak[kind] >= self.run.collapse_patience

    def check(self, row: dict, entropy: Optional[Callable[[], float]] = None) -> Optional[tuple[str, str]]:
        """(kind, one-line reason) if this row completes a collapse, else None.

        `entropy` is called for the token-mean entropy only when the row has no entropy/token_mean
        and an entropy criterion is on.
        """
        r = self.run
        for k in FINITE_KEYS:
            v = row.get(k)
            if isinstance(v, float) and not math.isfinite(v):
                return "nan", f"{k} = {v} at step {row.get('step')}"
        if r.collapse_reward_floor > -1 and "reward/mean" in row:
            if self._sustained("reward", row["reward/mean"] < r.collapse_reward_floor):
                return "reward", (f"reward/mean below {r.collapse_reward_floor} for {self.streak['reward']} steps "
                                  f"(last {row['reward/mean']:.4g})")
        if self.needs_entropy:
            h = row.get("entropy/token_mean")
            if h is None and entropy is not None:
                h = entropy()
            if h is not None:
                hi = r.collapse_entropy_high * self.log_v
                if r.collapse_entropy_high > 0 and self._sustained("entropy_high", h > hi):
                    return "entropy_high", (f"entropy/token_mean above {hi:.4g} nats ({r.collapse_entropy_high} log V) "
                                            f"for {self.streak['entropy_high']} steps (last {h:.4g})")
                if r.collapse_entropy_low > 0 and self._sustained("entropy_low", h < r.collapse_entropy_low):
                    return "entropy_low", (f"entropy/token_mean below {r.collapse_entropy_low} nats for "
                                           f"{self.streak['entropy_low']} steps (last {h:.4g})")
        kl = row.get("kl/step")
        if r.collapse_kl_jump > 0 and isinstance(kl, float):
            if len(self.kl_history) >= KL_HISTORY_MIN:
                base = float(np.median(self.kl_history))
                if kl > r.collapse_kl_jump * base:
                    times = kl / base if base > 0 else math.inf
                    return "kl_jump", (f"kl/step = {kl:.3g} is {times:.3g}x the median {base:.3g} of the "
                                       f"{len(self.kl_history)} earlier steps (limit {r.collapse_kl_jump}x)")
            self.kl_history.append(kl)
        return None

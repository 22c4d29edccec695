"""The on-policy check peers get wrong: are the log-probs of one batch the same under every split?

"On-policy" verl runs show ppo_kl != 0 and nonzero clip fractions because log-probs recomputed with
another micro-batch split differ (verl #6280, #2996). At after_rollout of a probed step this probe
recomputes log pi_old(a_t) of the step's batch, under no_grad, in k micro-batches (k in SPLITS that
divide the batch) and whole with PAD extra left-padding columns on the prompts (two forwards), and compares each to the
log-probs the trainer's loss uses (ctx.old_logp):

  consistency/logp_abs_max   max over the variants and the response tokens of |log pi_variant(a_t) - log pi_old(a_t)|

0 means the ratio of an on-policy run is 1 whatever the split; `solidrl audit` requires it to be at most
loss_audit.CONSISTENCY_TOL (a float32 batch of another shape sums in another order: ~1e-6 on CPU).
The probe group `consistency` (probes.groups); probes/probeset.py attaches it every probes.audit_every
steps, the schedule of the probes `solidrl audit` reads.
Left out: splits along the sequence (sequence packing; solidrl does not pack).
"""
from __future__ import annotations

import torch

from solidrl.trainer import algos
from solidrl.trainer.loop import StepContext, Trainer
from solidrl.trainer.rollout import Rollout, response_logits

__all__ = ["ConsistencyProbe", "attach", "SPLITS", "PAD", "recompute_logp"]

SPLITS = (4,)
"""Micro-batch counts tried (when they divide the batch); the trainer's own forward is the whole batch."""
PAD = 3


def _padded(ro: Rollout, pad: int, pad_id: int) -> Rollout:
    S = ro.prompt_ids.shape[0]
    ids = torch.cat([torch.full((S, pad), pad_id, dtype=ro.prompt_ids.dtype, device=ro.prompt_ids.device),
                     ro.prompt_ids], 1)
    mask = torch.cat([torch.zeros((S, pad), dtype=ro.prompt_mask.dtype, device=ro.prompt_mask.device),
                      ro.prompt_mask], 1)
    return Rollout(ids, mask, ro.response_ids, ro.response_mask, ro.rollout_logp, ro.truncated,
                   ro.policy_version, ro.token_version)


@torch.no_grad()
def recompute_logp(model, ro: Rollout, k: int = 1, pad: int = 0, pad_id: int = 0) -> torch.Tensor:
    """log pi(a_t) [S, R] from k equal micro-batches (k divides S), prompts left-padded by `pad` more columns."""
    if pad:
        ro = _padded(ro, pad, pad_id)
    S = ro.response_ids.shape[0]
    chunks = torch.arange(S, device=ro.response_ids.device).chunk(k)
    out = [algos.gather_logprobs(response_logits(model, ro.select(c)).float(), ro.response_ids[c]) for c in chunks]
    return torch.cat(out, 0)


class ConsistencyProbe:
    def __init__(self, trainer: Trainer, every: int = 1):
        self.trainer = trainer
        self.every = max(1, every)
        self._row: dict = {}

    def attach(self) -> "ConsistencyProbe":
        self.trainer.add_hook("after_rollout", self.after_rollout)
        self.trainer.add_hook("step_end", self.step_end)
        return self

    def after_rollout(self, ctx: StepContext) -> None:
        if ctx.step % self.every:
            return
        ro, sel = ctx.rollout, ctx.rollout.response_mask > 0
        S = ro.response_ids.shape[0]
        base = ctx.old_logp.float()
        pad_id = self.trainer.tokenizer.pad_token_id
        worst = 0.0
        variants = [(k, 0) for k in SPLITS if S % k == 0] + [(1, PAD)]
        for k, pad in variants:
            lp = recompute_logp(ctx.model, ro, k, pad, pad_id)
            worst = max(worst, float((lp - base)[sel].abs().max()) if sel.any() else 0.0)
        self._row = {"consistency/logp_abs_max": worst}

    def step_end(self, ctx: StepContext) -> None:
        ctx.metrics.update(self._row)
        self._row = {}


def attach(trainer: Trainer, every: int | None = None) -> ConsistencyProbe:
    """Attach once per trainer; every defaults to probes.audit_every."""
    every = trainer.cfg.probes.audit_every if every is None else every
    probe = getattr(trainer, "_consistency_probe", None)
    if probe is None:
        probe = ConsistencyProbe(trainer, every).attach()
        trainer._consistency_probe = probe
    return probe

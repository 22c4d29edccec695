"""Why a group gave no signal, lengths by outcome, and the sampler's top-k/top-p log-prob offset.

At step_end of every probed step:

  adv/zero_frac_all_correct   groups with every advantage exactly 0 and every response correct   mean over groups
  adv/zero_frac_all_wrong     ... every response wrong, not all of them truncated                  mean over groups
  adv/zero_frac_truncated     ... every response truncated (cut off at the budget: graded 0)       mean over groups
                              The three are disjoint; with binary rewards they sum to adv/zero_frac (the
                              recorder's). The last is how truncation silently kills the gradient
                              (TRL #3502, radixark/miles #1034, greyhaven-ai/autocontext #1067).
  response/length_correct_mean, response/length_wrong_mean
                              mean response length (tokens, EOS included) of correct / wrong responses;
                              absent when no response is correct / wrong
  mismatch/sampler_logp_offset_mean, _std
                              x_t = log q(a_t) - log pi_old(a_t), q the sampler's processed distribution
                              (temperature, top-k, top-p applied to pi_old's logits, as the sampler does):
                              mean (the systematic part: -log of the kept mass, the same for every ratio)
                              and population std over the fresh response tokens (sampled by the current
                              weights: lag 0; under staleness the others came from another policy, whose
                              processing pi_old's logits cannot give). Logged only when the sampler
                              processes the logits (T != 1, top_k > 0 or top_p < 1): a sampler that reports
                              log-probs of the truncated distribution biases every ratio by this offset (TRL #6789)

The probe group `diagnostics` (probes.groups); probes/probeset.py attaches it.

Left out: groups with equal rewards but mixed correctness (possible with a length penalty): they
count in adv/zero_frac only.
"""
from __future__ import annotations

from typing import Any

import torch

from solidrl.trainer.loop import StepContext, Trainer
from solidrl.trainer.rollout import sampling_logprobs

__all__ = ["Diagnostics", "attach", "zero_signal_split", "length_by_outcome"]

F64 = torch.float64


def zero_signal_split(adv: torch.Tensor, correct: torch.Tensor, truncated: torch.Tensor,
                      group_size: int) -> dict[str, float]:
    """Fractions of groups (contiguous, size G) with all-zero advantages, split by why (disjoint)."""
    zero = (adv.reshape(-1, group_size) == 0).all(-1)
    c = correct.reshape(-1, group_size) > 0
    tr = truncated.reshape(-1, group_size).bool()
    all_tr = tr.all(-1)
    n = float(zero.numel())
    return {"zero_frac_all_correct": float((zero & c.all(-1)).sum()) / n,
            "zero_frac_all_wrong": float((zero & (~c).all(-1) & ~all_tr).sum()) / n,
            "zero_frac_truncated": float((zero & all_tr).sum()) / n}


def length_by_outcome(lengths: torch.Tensor, correct: torch.Tensor) -> dict[str, float]:
    """Mean length of correct and of wrong responses; a key is absent when its set is empty."""
    out = {}
    c = correct > 0
    if c.any():
        out["length_correct_mean"] = float(lengths[c].to(F64).mean())
    if (~c).any():
        out["length_wrong_mean"] = float(lengths[~c].to(F64).mean())
    return out


class Diagnostics:
    def __init__(self, trainer: Trainer, every: int = 1):
        self.trainer = trainer
        self.every = max(1, every)

    def attach(self) -> "Diagnostics":
        self.trainer.add_hook("step_end", self.step_end)
        return self

    @torch.no_grad()
    def step_end(self, ctx: StepContext) -> None:
        if ctx.step % self.every:
            return
        ro, G = ctx.rollout, ctx.cfg.rollout.group_size
        row: dict[str, Any] = {}
        row.update({f"adv/{k}": v for k, v in zero_signal_split(ctx.advantages, ctx.correct, ro.truncated, G).items()})
        row.update({f"response/{k}": v for k, v in length_by_outcome(ro.lengths, ctx.correct).items()})
        r = ctx.cfg.rollout
        sel = ro.response_mask > 0
        if ctx.token_version is not None:  # fresh tokens only: there pi_old is the sampler's own policy
            sel = sel & (ctx.token_version == ctx.version)
        if (r.temperature != 1.0 or r.top_k or r.top_p < 1.0) and sel.any():
            z = ctx.old_logits[sel]
            ids = ro.response_ids[sel].unsqueeze(-1)
            q = sampling_logprobs(z, r.temperature, r.top_k, r.top_p).gather(-1, ids).squeeze(-1).to(F64)
            p = torch.log_softmax(z.to(F64), -1).gather(-1, ids).squeeze(-1)
            x = (q - p)[torch.isfinite(q)]  # a token outside pi_old's top-k/p set (float32 ties) has q = 0
            if x.numel():
                row["mismatch/sampler_logp_offset_mean"] = float(x.mean())
                row["mismatch/sampler_logp_offset_std"] = float(x.std(correction=0))
        ctx.metrics.update(row)


def attach(trainer: Trainer, every: int | None = None) -> Diagnostics:
    """Attach once per trainer; every defaults to probes.every."""
    every = trainer.cfg.probes.every if every is None else every
    probe = getattr(trainer, "_diagnostics", None)
    if probe is None:
        probe = Diagnostics(trainer, every).attach()
        trainer._diagnostics = probe
    return probe

"""Rollout: batched sampling with a KV cache, and the teacher-forced forward that training uses.

What it returns is what the probes and the off-policy machinery need: token ids, masks, the
sampler's own per-token log-probabilities (kept: training-inference mismatch is measured against
them) and truncation flags.

Left-padded prompts, right-padded responses. The training forward passes
`position_ids = cumsum(attention_mask) - 1` so positions match generation
(../shared/NOTES-transformers.md), and asks the model for logits over the response positions
only (`logits_to_keep`), never over the prompt.
"""
from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from transformers import DynamicCache

from .model import DTYPES


def _cache_kwarg(model) -> str:
    """transformers >= 5.2x renamed `past_key_values` to `cache` (the old name warns until 5.40)."""
    import inspect
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class _Logits:
    """Stand-in for a model output that only carries logits (the shared prefill's, indexed out to every row)."""
    logits: torch.Tensor


@dataclass
class Rollout:
    prompt_ids: torch.Tensor      # [S, P] long, left-padded
    prompt_mask: torch.Tensor     # [S, P] long
    response_ids: torch.Tensor    # [S, R] long, right-padded with pad_id after EOS
    response_mask: torch.Tensor   # [S, R] float, 1 on generated tokens up to and including EOS
    rollout_logp: torch.Tensor    # [S, R] float32, log-prob of each sampled token under the sampler's distribution
    truncated: torch.Tensor       # [S] bool, no EOS within the budget
    policy_version: int = 0       # optimizer-update count of the weights that sampled the first token
    token_version: Optional[torch.Tensor] = None  # [S, R] long, that count for each token (partial rollouts)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def full_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, mask, position ids, rows) of the whole sequences [S, P + R], one plain forward's inputs (the
        JVP probe, the trust region); rows: bool, the logit rows predicting response tokens (the logits at i
        predict token i + 1; none after EOS, whose rows carry padding)."""
        ids = torch.cat([self.prompt_ids, self.response_ids], 1)
        mask = torch.cat([self.prompt_mask, self.response_mask.long()], 1)
        P, R = self.prompt_ids.shape[1], self.response_ids.shape[1]
        rows = torch.zeros_like(mask, dtype=torch.bool)
        rows[:, P - 1:P + R - 1] = self.response_mask > 0
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), rows

    def select(self, idx: torch.Tensor) -> "Rollout":
        return Rollout(self.prompt_ids[idx], self.prompt_mask[idx], self.response_ids[idx],
                       self.response_mask[idx], self.rollout_logp[idx], self.truncated[idx],
                       self.policy_version,
                       None if self.token_version is None else self.token_version[idx])


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """log q(v) of the distribution actually sampled: softmax(logits / T) restricted to top-k/top-p.

    With T = 1, top_k = 0, top_p = 1 this is the policy itself, so on-policy ratios are exactly 1.
    """
    z = logits.float() / temperature
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        cum = torch.softmax(sorted_z, -1).cumsum(-1)
        drop_sorted = cum - torch.softmax(sorted_z, -1) >= top_p  # keep the smallest prefix reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return torch.log_softmax(z, dim=-1)


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
             eos_id: int, pad_id: int, generator: torch.Generator, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, logit_noise: float = 0.0, version: int = 0,
             segment_len: int = 0, advance: Optional[Callable[[int], tuple]] = None,
             share_prompts: bool = True) -> Rollout:
    """Sample one response per row with a KV cache; stops early once every row has hit EOS.

    `logit_noise` adds N(0, sigma^2) to the sampler's logits (a calibrated training-inference
    mismatch); the returned log-probs are those of the noisy distribution actually sampled.

    Partial rollouts: with `advance`, at every token t = j * segment_len (j >= 1) the sampler becomes
    `advance(j) -> (model, version)` and the KV cache of prompt + response so far is recomputed
    under it, so token t is drawn from pi_{version_t}(. | s_t) exactly (an engine that kept the old
    cache would sample from neither policy). `version` is the first segment's; every token's is
    returned in `token_version`.

    share_prompts: consecutive rows with the same prompt (a group) are prefilled once and the cache
    indexed out to every row, as in `response_logits`.
    """
    S = prompt_ids.shape[0]
    device = prompt_ids.device
    mask = prompt_mask.clone()

    def prefill(model, ids_so_far, mask):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ckw = {_cache_kwarg(model): DynamicCache(config=model.config)}
        out = model(input_ids=ids_so_far, attention_mask=mask, position_ids=pos,
                    use_cache=True, logits_to_keep=1, **ckw)
        return out, ckw, pos[:, -1:] + 1

    runs = prompt_runs(prompt_ids, prompt_mask) if share_prompts else None
    if runs is None:
        out, ckw, next_pos = prefill(model, prompt_ids, mask)
    else:  # each run of identical prompts (a group) is prefilled once and its cache indexed out to its rows
        first_rows, run = runs
        out, ckw, next_pos = prefill(model, prompt_ids[first_rows], mask[first_rows])
        ckw[_cache_kwarg(model)].batch_select_indices(run)
        out, next_pos = _Logits(out.logits[run]), next_pos[run]
    ids = torch.full((S, max_new_tokens), pad_id, dtype=torch.long, device=device)
    versions = torch.full((S, max_new_tokens), version, dtype=torch.long, device=device)
    logps = torch.zeros((S, max_new_tokens), dtype=torch.float32, device=device)
    alive = torch.ones(S, dtype=torch.bool, device=device)
    rmask = torch.zeros((S, max_new_tokens), dtype=torch.float32, device=device)
    for t in range(max_new_tokens):
        if advance is not None and segment_len > 0 and t > 0 and t % segment_len == 0:
            model, version = advance(t // segment_len)
            out, ckw, next_pos = prefill(model, torch.cat([prompt_ids, ids[:, :t]], dim=1), mask)
        versions[:, t] = version
        logits = out.logits[:, -1, :].float()
        if not torch.isfinite(logits).all():
            raise FloatingPointError("sampler logits")
        if logit_noise > 0:
            logits = logits + logit_noise * torch.randn(logits.shape, generator=generator, device=device)
        lq = sampling_logprobs(logits, temperature, top_k, top_p)
        tok = torch.multinomial(lq.exp(), 1, generator=generator).squeeze(-1)
        tok = torch.where(alive, tok, torch.full_like(tok, pad_id))
        ids[:, t] = tok
        logps[:, t] = torch.where(alive, lq.gather(-1, tok[:, None]).squeeze(-1), torch.zeros_like(logps[:, t]))
        rmask[:, t] = alive.float()
        alive = alive & (tok != eos_id)
        if not alive.any() or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((S, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **ckw)
        next_pos = next_pos + 1
    # Trim columns nobody used.
    width = int(rmask.sum(0).nonzero().max().item()) + 1 if rmask.any() else 1
    return Rollout(prompt_ids, prompt_mask, ids[:, :width], rmask[:, :width], logps[:, :width],
                   truncated=alive.clone(), policy_version=int(versions[0, 0]),
                   token_version=versions[:, :width])


def prompt_runs(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Runs of consecutive rows with the same (left-padded) prompt: (first row of each run [U], run of
    each row [S]), or None when no two consecutive rows share a prompt. A group's G samples are such a run."""
    S = prompt_ids.shape[0]
    if S < 2:
        return None
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(-1) & (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    if not bool(same.any()):
        return None
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=same.device), ~same])
    return starts.nonzero().squeeze(-1), starts.long().cumsum(0) - 1


def response_logits(model, r: Rollout, share_prompts: bool = True) -> torch.Tensor:
    """Teacher-forced logits [S, R, V] predicting each response token (no logits over the prompt).

    share_prompts: rows that repeat the previous row's prompt (a group's G samples) share its keys and
    values: the prompt pass runs once per run of identical prompts, its KV cache is indexed out to
    every row, and the response pass runs on top of it, with gradient through the shared cache. A
    causal model's prompt positions never see the response, so this is the same function: the same
    logits and gradient up to float32 summation order (~1e-6 relative), for ~(P/G + R) instead of
    P + R token positions per row. Every caller goes through here, so pi_old, the loss's forward and
    the probes' forwards of one batch take the same path and an unchanged policy reproduces pi_old
    bit for bit. Batches without repeated prompts take the plain single forward.
    """
    R = r.response_ids.shape[1]
    runs = prompt_runs(r.prompt_ids, r.prompt_mask) if share_prompts and r.prompt_ids.shape[1] > 1 else None
    if runs is None:
        ids = torch.cat([r.prompt_ids, r.response_ids], dim=1)
        mask = torch.cat([r.prompt_mask, r.response_mask.long()], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                    logits_to_keep=R + 1)
        return out.logits[:, :R, :]
    first_rows, run = runs
    P = r.prompt_ids.shape[1]
    # The prompt pass covers the prompt but its last column; the response pass starts from that column
    # (never padding: prompts are left-padded), so every logit comes from one LM-head call over [S, R]
    # positions as in the plain path. (A separate [U, 1] head call rounds differently when the head's
    # weight requires grad, which would break pi = pi_ref bit for bit at step 0.)
    p_mask = r.prompt_mask[first_rows, :P - 1]
    ckw = {_cache_kwarg(model): DynamicCache(config=model.config)}
    model(input_ids=r.prompt_ids[first_rows, :P - 1], attention_mask=p_mask,
          position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1, **ckw)
    ckw[_cache_kwarg(model)].batch_select_indices(run)
    mask = torch.cat([r.prompt_mask, r.response_mask.long()], dim=1)[:, :P + R - 1]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, P - 1:]
    ids = torch.cat([r.prompt_ids[:, P - 1:], r.response_ids[:, :R - 1]], dim=1)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **ckw).logits


class RolloutEngine:
    """The sampler. By default it *is* the policy (same weights, same precision): fully on-policy.

    With staleness k it samples with the weights of k steps ago (an asynchronous rollout
    engine); with partial_versions m a response's segment j of m comes from the weights of
    k + (m - 1 - j) steps ago; with a lower `rollout_dtype` it samples from a low-precision copy
    (training-inference mismatch). The engine keeps its own copy only when one of these knobs is on.
    Before the first k + m - 1 steps exist, the oldest snapshot (the initial policy) stands in.
    """

    def __init__(self, policy, staleness: int = 0, rollout_dtype: str = "float32", partial_versions: int = 1):
        self.policy = policy
        self.staleness = staleness
        self.segments = partial_versions
        self.dtype = DTYPES[rollout_dtype]
        self.separate = staleness > 0 or rollout_dtype != "float32" or partial_versions > 1
        self.snapshots: deque = deque(maxlen=staleness + partial_versions)
        self.sampler = copy.deepcopy(policy).to(self.dtype).eval() if self.separate else policy
        self.versions: deque = deque(maxlen=staleness + partial_versions)

    def push(self, version: int) -> None:
        """Record the policy's current weights (call once per step, before sampling)."""
        if not self.separate:
            return
        self.snapshots.append({k: v.detach().clone() for k, v in self.policy.state_dict().items()})
        self.versions.append(version)

    def model_for_sampling(self, segment: int = 0) -> tuple[torch.nn.Module, int]:
        """(sampler, its version) for segment j of a response; version -1 means "the policy itself"."""
        if not self.separate:
            return self.policy, -1
        # the newest snapshot is this step's policy; segment j lags k + (m - 1 - j) steps behind it
        i = max(0, len(self.snapshots) - 1 - self.staleness - (self.segments - 1 - segment))
        self.sampler.load_state_dict({k: v.to(self.dtype) for k, v in self.snapshots[i].items()})
        return self.sampler, self.versions[i]

    def state_dict(self) -> dict:
        return {"snapshots": list(self.snapshots), "versions": list(self.versions)}

    def load_state_dict(self, d: Optional[dict]) -> None:
        if not d:
            return
        self.snapshots.clear()
        self.versions.clear()
        self.snapshots.extend(d["snapshots"])
        self.versions.extend(d["versions"])

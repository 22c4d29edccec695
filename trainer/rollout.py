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
             segment_len: int = 0, advance: Optional[Callable[[int], tuple]] = None) -> Rollout:
    """Sample one response per row with a KV cache; stops early once every row has hit EOS.

    `logit_noise` adds N(0, sigma^2) to the sampler's logits (a calibrated training-inference
    mismatch); the returned log-probs are those of the noisy distribution actually sampled.

    Partial rollouts: with `advance`, at every token t = j * segment_len (j >= 1) the sampler becomes
    `advance(j) -> (model, version)` and the KV cache of prompt + response so far is recomputed
    under it, so token t is drawn from pi_{version_t}(. | s_t) exactly (an engine that kept the old
    cache would sample from neither policy). `version` is the first segment's; every token's is
    returned in `token_version`.
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

    out, ckw, next_pos = prefill(model, prompt_ids, mask)
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


def response_logits(model, r: Rollout) -> torch.Tensor:
    """Teacher-forced logits [S, R, V] predicting each response token (no logits over the prompt)."""
    ids = torch.cat([r.prompt_ids, r.response_ids], dim=1)
    mask = torch.cat([r.prompt_mask, r.response_mask.long()], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    R = r.response_ids.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                logits_to_keep=R + 1)
    return out.logits[:, :R, :]


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

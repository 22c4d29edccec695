"""The shared-prompt path of the trainer's forwards, part by part: each group's prompt run once.

The G samples of a group share their prompt, and a causal model's prompt positions do not see the
response, so the prompt's keys and values are the same for all G rows. Computing them once per group
(with gradient) and indexing the KV cache out to the G rows gives the same logits and the same gradient
for ~(P/G + R) instead of (P + R) positions per row; the same holds for the sampler's prefill.
trainer/rollout.py does this by default (response_logits and generate, share_prompts=True); this times
both paths, interleaved on one batch of the trainer's default workload (64 prompts x 8, addition):

  update    forward + backward of the token-mean PG loss: response_logits(share_prompts=False) vs
            (share_prompts=True), and their gradients' difference
  prefill   the sampler's prompt pass on all S rows vs on the S/G distinct prompts
  rollout   the trainer's whole rollout, for scale

    .venv/bin/python bench/shared_prompt.py [--sizes nano micro] [--reps 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from transformers import DynamicCache

from solidrl.trainer.config import TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer
from solidrl.trainer.rollout import _cache_kwarg, response_logits


def parts(size: str, reps: int) -> dict:
    cfg = apply_overrides(TrainConfig(), {"model.size": size, "probes.enabled": False})
    t = Trainer(cfg, tempfile.mkdtemp(prefix="shared_prompt_"), progress=False)
    G = cfg.rollout.group_size
    problems = t.sample_problems(0)
    ro = t.rollout(problems, 0)
    mask = ro.response_mask
    adv = torch.randn(mask.shape[0], generator=torch.Generator().manual_seed(0))

    def update(forward) -> torch.Tensor:
        t.model.zero_grad(set_to_none=True)
        lp = torch.log_softmax(forward().float(), -1).gather(-1, ro.response_ids[..., None]).squeeze(-1)
        (-(adv[:, None] * lp * mask).sum() / mask.sum()).backward()
        return torch.cat([p.grad.reshape(-1) for p in t.model.parameters() if p.grad is not None])

    def prefill(rows: slice) -> None:
        ids, m = ro.prompt_ids[rows], ro.prompt_mask[rows]
        with torch.no_grad():
            t.model(input_ids=ids, attention_mask=m, position_ids=(m.cumsum(-1) - 1).clamp(min=0), use_cache=True,
                    logits_to_keep=1, **{_cache_kwarg(t.model): DynamicCache(config=t.model.config)})

    full = lambda: response_logits(t.model, ro, share_prompts=False)  # noqa: E731
    shared = lambda: response_logits(t.model, ro, share_prompts=True)  # noqa: E731
    g_full, g_shared = update(full), update(shared)
    arms = {"update_full": lambda: update(full), "update_shared": lambda: update(shared),
            "prefill_all": lambda: prefill(slice(None)), "prefill_distinct": lambda: prefill(slice(None, None, G)),
            "rollout": lambda: t.rollout(problems, 0)}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(reps):
        for k, f in arms.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    m = {k: statistics.median(v) for k, v in times.items()}
    return {"size": size, "prompt_width": ro.prompt_ids.shape[1], "response_width": ro.response_ids.shape[1],
            "grad_rel_diff": float((g_full - g_shared).norm() / g_full.norm()), "median_s": m,
            "update_shared_over_full": m["update_shared"] / m["update_full"],
            "prefill_distinct_over_all": m["prefill_distinct"] / m["prefill_all"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["nano", "micro"])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    for size in a.sizes:
        r = parts(size, a.reps)
        ms = {k: round(v * 1e3, 1) for k, v in r["median_s"].items()}
        print(f"{size:6s} P={r['prompt_width']} R={r['response_width']}  medians (ms) {ms}\n"
              f"       update shared/full = {r['update_shared_over_full']:.2f}  prefill distinct/all = "
              f"{r['prefill_distinct_over_all']:.2f}  gradient rel diff {r['grad_rel_diff']:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Trainer speed: steps/s and generated tokens/s for nano and micro, rollout and update timed apart.

Workload (the prototype's, ../shared/NOTES-transformers.md): 64 prompts x 8 samples, addition
(<= 6 new tokens), the perfect-baseline loop, probes off (bench/probe_overhead.py measures them).
The first `--warmup` steps are dropped; medians over the rest are reported.

    .venv/bin/python bench/train_speed.py [--sizes nano micro] [--steps 30] [--threads 1] [--out bench/results/train_speed.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from solidrl.trainer.config import TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer
from solidrl.trainer.model import count_params


def bench_size(size: str, steps: int, warmup: int) -> dict:
    cfg = apply_overrides(TrainConfig(), {"model.size": size, "run.steps": steps + warmup,
                                          "probes.enabled": False})
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(cfg, d, progress=False)
        rows, toks = [], []
        t.add_hook("step_end", lambda ctx: toks.append(float(ctx.rollout.response_mask.sum())))
        for step in range(steps + warmup):
            rows.append(t.train_step(step))
    rows, toks = rows[warmup:], toks[warmup:]
    step_s = statistics.median(r["time/step_s"] for r in rows)
    roll_s = statistics.median(r["time/rollout_s"] for r in rows)
    upd_s = statistics.median(r["time/update_s"] for r in rows)
    gen_tok_s = statistics.median(n / r["time/rollout_s"] for n, r in zip(toks, rows))
    return {"size": size, "params": count_params(t.model), "steps_timed": steps,
            "sequences_per_step": cfg.rollout.prompts_per_step * cfg.rollout.group_size,
            "step_s": step_s, "steps_per_s": 1.0 / step_s, "rollout_s": roll_s, "update_s": upd_s,
            "generated_tokens_per_s": gen_tok_s, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["nano", "micro"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = torch's default; on a shared machine 1 is far steadier)")
    p.add_argument("--out", default="bench/results/train_speed.json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    results = []
    for size in a.sizes:
        r = bench_size(size, a.steps, a.warmup)
        results.append(r)
        print(f"{size:6s} {r['params'] / 1e6:6.2f}M params  step {r['step_s'] * 1000:7.1f} ms "
              f"({r['steps_per_s']:6.2f} steps/s)  rollout {r['rollout_s'] * 1000:7.1f} ms  "
              f"update {r['update_s'] * 1000:7.1f} ms  generated {r['generated_tokens_per_s']:9.0f} tok/s",
              flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["bench/train_speed.py", *sys.argv[1:]]),
                               "time": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cost of the JVP predictors: jvp, jvp2 and jvp3 against a forward and a bare training step.

One Trainer per size (probes off), one training step to get a real rollout batch, then on that batch,
interleaved round by round (so machine load drifts hit every arm alike):
  forward   the policy's logits on the batch (no grad, math attention, as the JVP probe runs)
  jvp       one forward-mode pass: dz1 (theory.kernel.jvp_logit_change)
  jvp2      forward over forward: dz1, dz2 (jvp_taylor_logits order 2)
  jvp3      three nestings: dz1, dz2, dz3 (order 3)
  fd        the jvp plus two forwards at theta +- h delta: dz1 exact, dz2 and dz3 by central differences
            (theory.kernel.fd_taylor_logits; probes.jvp_mode = fd)
  step      a bare training step (rollout, forward, backward, optimizer; Trainer.train_step, probes off)
Printed per size: the median seconds of each, and as ratios (median over rounds of the per-round ratio,
with the middle 50%): each JVP arm in forwards, and in bare steps; the extra cost of jvp2 over jvp and of
jvp3 over jvp2 and of fd over jvp, in forwards (issue 18's target: jvp2 at most two forwards beyond the
first-order JVP).

    .venv/bin/python bench/jvp_cost.py [--sizes nano micro] [--rounds 12] [--threads 1] [--out bench/results/jvp_cost.json]

--sizes takes the transfer table's model names (nano, micro, small, smollm2-135m: its batch and task).
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
from torch.nn.attention import SDPBackend, sdpa_kernel

from solidrl.theory.kernel import fd_taylor_logits, jvp_logit_change, jvp_taylor_logits
from solidrl.trainer.config import TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer

ARMS = ("forward", "jvp", "jvp2", "jvp3", "fd", "step")


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def bench_size(size: str, rounds: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        from solidrl.probes.commands.transfer import MODELS  # the transfer table's per-model settings

        model_over = MODELS.get(size, {"model.size": size, "task.name": "addition"})
        over = {**model_over, "run.threads": str(threads), "probes.enabled": "false", "run.steps": str(rounds + 2)}
        trainer = Trainer(apply_overrides(TrainConfig(), over), d, progress=False)
        got = {}
        trainer.add_hook("step_end", lambda ctx: got.setdefault("ro", ctx.rollout))
        trainer.train_step(0)
        ro = got["ro"]
        model = trainer.model
        ids, mask, pos, rows = ro.full_inputs()  # what the JVP probe feeds the model
        g = torch.Generator().manual_seed(0)
        delta = {n: 1e-4 * torch.randn(q.shape, generator=g) for n, q in model.named_parameters() if q.requires_grad}

        def forward():
            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
                model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[rows].double()

        def run_jvp(order):
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                if order == "fd":
                    fd_taylor_logits(model, ids, mask, pos, delta, rows)
                elif order == 1:
                    jvp_logit_change(model, ids, mask, pos, delta, rows)
                else:
                    jvp_taylor_logits(model, ids, mask, pos, delta, rows, order)

        fns = {"forward": forward, "jvp": lambda: run_jvp(1), "jvp2": lambda: run_jvp(2), "jvp3": lambda: run_jvp(3),
               "fd": lambda: run_jvp("fd")}
        times = {a: [] for a in ARMS}
        for r in range(rounds + 1):  # round 0 warms up
            order = list(ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)])
            for arm in order:
                t0 = time.perf_counter()
                if arm == "step":
                    trainer.train_step(r + 1)
                else:
                    fns[arm]()
                if r:
                    times[arm].append(time.perf_counter() - t0)
            print(f"  {size}: round {r}/{rounds}", file=sys.stderr, flush=True)
    per = lambda a, b: [x / y for x, y in zip(times[a], times[b])]  # noqa: E731
    extra = lambda a, b: [(x - y) / f for x, y, f in zip(times[a], times[b], times["forward"])]  # noqa: E731
    res = {"size": size, "tokens": int(rows.sum()), "batch": list(ids.shape), "threads": threads, "rounds": rounds,
           "median_s": {a: statistics.median(v) for a, v in times.items()},
           "in_forwards": {a: _quartiles(per(a, "forward")) for a in ("jvp", "jvp2", "jvp3", "fd", "step")},
           "in_steps": {a: _quartiles(per(a, "step")) for a in ("forward", "jvp", "jvp2", "jvp3", "fd")},
           "extra_forwards": {"jvp2 - jvp": _quartiles(extra("jvp2", "jvp")), "jvp3 - jvp2": _quartiles(extra("jvp3", "jvp2")),
                              "fd - jvp": _quartiles(extra("fd", "jvp"))}}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["nano", "micro"])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/jvp_cost.json")
    a = ap.parse_args(argv)
    results = [bench_size(s, a.rounds, a.threads) for s in a.sizes]
    fmt = lambda q: f"{q[1]:.2f} ({q[0]:.2f}-{q[2]:.2f})"  # noqa: E731
    print("| size | tokens | forward s | bare step s | jvp in forwards | jvp2 in forwards | jvp3 in forwards "
          "| fd (dz1-dz3) in forwards | jvp2 - jvp, forwards | fd - jvp, forwards | jvp2 in bare steps | jvp3 in bare steps "
          "| fd in bare steps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m, f, s, e = r["median_s"], r["in_forwards"], r["in_steps"], r["extra_forwards"]
        print(f"| {r['size']} | {r['tokens']} | {m['forward']:.3f} | {m['step']:.3f} | {fmt(f['jvp'])} | {fmt(f['jvp2'])} | "
              f"{fmt(f['jvp3'])} | {fmt(f['fd'])} | {fmt(e['jvp2 - jvp'])} | {fmt(e['fd - jvp'])} | {fmt(s['jvp2'])} | "
              f"{fmt(s['jvp3'])} | {fmt(s['fd'])} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"command": "bench/jvp_cost.py " + " ".join(argv or sys.argv[1:]),
                                       "results": results}, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

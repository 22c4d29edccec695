"""Probe overhead: step time with probes on / off, per probe group, for nano and micro.

One process, one Trainer per arm, all arms on the same seed (probes do not change training, so every
arm takes the same steps on the same batches); the arms' steps are interleaved (step k of every arm,
in a rotating order, before step k + 1 of any), so machine load drifts hit all arms alike. The figure
per arm is the median over steps of t_arm(k) / t_bare(k), with the middle 50% of those ratios; beside
it, 1 + (the recorder's own time in the step's hooks, time/probes_s) / (the bare step), steadier when
the machine is shared.

Every arm is a set of probes.* overrides and gets exactly what `solidrl train --set ...` attaches with
them (probes/probeset.py `attach_probes`); the printed table and the JSON give each arm's --set flags.
Arms: bare (probes.enabled=false), train (`solidrl train` with no --set: every group, the loss-term
audit and the consistency check every probes.audit_every = 10 steps), default (the recorder's groups,
recorder.RECORDER_GROUPS, at cfg.probes defaults: stats file, predictors), subsetK (default with
probes.max_states = K: the new-policy and reference forwards, the expensive part, on K of the batch's
sequences), all_but_pred (the recorder's groups but pred), a group alone or groups joined by '+'
(entropy+grad: `--set probes.groups=entropy,grad`), stats (no group: only the stats file).
Targets (the issue): default <= 1.35x a bare step; entropy and grad probes alone <= 1.05x.

    .venv/bin/python bench/probe_overhead.py [--sizes nano micro] [--steps 30] [--warmup 3]
        [--task addition] [--arms ...] [--out bench/results/probe_overhead.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from solidrl.probes.probeset import attach_probes
from solidrl.probes.recorder import GROUPS, RECORDER_GROUPS
from solidrl.trainer.config import TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer

TARGETS = {"default": 1.35, "entropy+grad": 1.05, "entropy": 1.05, "grad": 1.05}


def arm_overrides(arm: str) -> dict[str, str]:
    """probes.* settings of an arm (the rest of the config is the default run)."""
    recorder_groups = ",".join(g for g in GROUPS if g in RECORDER_GROUPS)
    if arm == "bare":
        return {"probes.enabled": "false"}
    if arm == "train":
        return {}
    if arm == "default":
        return {"probes.groups": recorder_groups}
    if arm.startswith("subset"):  # subset64: the default set with the step / ref forwards on 64 sequences
        return {"probes.groups": recorder_groups, "probes.max_states": arm[len("subset"):] or "64"}
    if arm == "all_but_pred":
        return {"probes.groups": ",".join(g for g in GROUPS if g in RECORDER_GROUPS and g != "pred"),
                "probes.save_stats": "false"}
    if arm == "stats":
        return {"probes.groups": "", "probes.save_stats": "true"}
    groups = arm.split("+")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SystemExit(f"unknown arm {arm!r}; known: bare, train, default, subsetK, all_but_pred, stats, {', '.join(GROUPS)} "
                         "or groups joined by '+'")
    return {"probes.groups": ",".join(groups), "probes.save_stats": "false"}


def set_flags(arm: str) -> str:
    """The `solidrl train` flags that attach what this arm measures."""
    return " ".join(f"--set {k}={v}" for k, v in arm_overrides(arm).items()) or "(no --set)"


def bench_size(size: str, arms: list[str], steps: int, warmup: int, threads: int, task: str = "addition") -> dict:
    trainers, dirs = {}, []
    for arm in arms:
        cfg = apply_overrides(TrainConfig(), {"model.size": size, "task.name": task, "run.steps": str(steps + warmup),
                                              "run.threads": str(threads), **arm_overrides(arm)})
        d = tempfile.TemporaryDirectory()
        dirs.append(d)
        t = Trainer(cfg, d.name, progress=False)
        attach_probes(t)  # what `solidrl train` attaches with this arm's --set flags (nothing for bare)
        trainers[arm] = t
    times: dict[str, list[float]] = {a: [] for a in arms}
    probe_s: dict[str, list[float]] = {a: [] for a in arms}
    lengths: list[float] = []
    for step in range(steps + warmup):
        k = step % len(arms)
        for arm in arms[k:] + arms[:k]:  # rotate who goes first
            t0 = time.perf_counter()
            row = trainers[arm].train_step(step)
            dt = time.perf_counter() - t0
            if step >= warmup:
                times[arm].append(dt)
                probe_s[arm].append(row.get("time/probes_s", 0.0))
                if arm == "bare":
                    lengths.append(row["response/length_mean"])
        print(f"  {size}: step {step + 1}/{steps + warmup} of {len(arms)} arms done", file=sys.stderr, flush=True)
    for d in dirs:
        d.cleanup()
    bare = times["bare"]
    out = {"size": size, "task": task, "steps_timed": steps, "threads": torch.get_num_threads(),
           "response_length_mean": statistics.mean(lengths),
           "bare_step_s_median": statistics.median(bare), "arms": {}}
    for arm in arms:
        ratios = sorted(a / b for a, b in zip(times[arm], bare))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out["arms"][arm] = {"ratio_median": statistics.median(ratios), "ratio_q25": q[0], "ratio_q75": q[2],
                            "step_s_median": statistics.median(times[arm]),
                            "probes_s_median": statistics.median(probe_s[arm]),
                            # the probes' own time (time/probes_s) over the bare step: less noisy than the ratio
                            "hook_ratio": 1.0 + statistics.median(probe_s[arm]) / statistics.median(bare),
                            "target": TARGETS.get(arm), "set": set_flags(arm)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["nano", "micro"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--task", default="addition", help="the trainer's task (longer answers: sum_list)")
    ap.add_argument("--arms", nargs="+", default=None,
                    help="default: bare default train all_but_pred entropy+grad and every group alone (nano); "
                         "bare default train all_but_pred entropy+grad entropy grad step ref (other sizes)")
    ap.add_argument("--out", default="bench/results/probe_overhead.json")
    args = ap.parse_args(argv)
    results = []
    for size in args.sizes:
        arms = args.arms or (["bare", "default", "train", "all_but_pred", "entropy+grad", *GROUPS, "stats"] if size == "nano"
                             else ["bare", "default", "train", "all_but_pred", "entropy+grad", "entropy", "grad", "step", "ref"])
        if "bare" not in arms:
            arms = ["bare", *arms]
        r = bench_size(size, arms, args.steps, args.warmup, args.threads, args.task)
        results.append(r)
        print(f"\n{size}, {args.task}: bare step {r['bare_step_s_median'] * 1e3:.1f} ms (median of {args.steps}), "
              f"{r['threads']} threads, mean response {r['response_length_mean']:.1f} tokens")
        print(f"  {'arm':<14} {'ratio':>6} {'q25-q75':>13} {'1+hook/bare':>11} {'step ms':>8} {'probes ms':>9}  target  flags")
        for arm, a in r["arms"].items():
            tgt = f"<= {a['target']:.2f} {'ok' if a['ratio_median'] <= a['target'] else 'MISSED'}" if a["target"] else ""
            print(f"  {arm:<14} {a['ratio_median']:6.3f} {a['ratio_q25']:6.3f}-{a['ratio_q75']:<6.3f} {a['hook_ratio']:11.3f} "
                  f"{a['step_s_median'] * 1e3:8.1f} {a['probes_s_median'] * 1e3:9.1f}  {tgt}  {a['set']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python bench/probe_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
                               "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "load_average": os.getloadavg(), "results": results}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

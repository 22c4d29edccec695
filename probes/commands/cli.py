"""`solidrl` command line: every subcommand, each from its own module (probes/commands/).

Every user mistake (unknown name, bad override, model directory that does not load, NaN in
training) ends with one line `solidrl: error: ...` and exit code 2 (1 for a failed run), never a
traceback; nothing already written in the run directory is removed (commands/common.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from solidrl.probes.probeset import attach_probes
from solidrl.trainer.config import ConfigError

from . import audit, ladder, leadtime, plot, transfer
from .common import (OneLineParser, add_common, add_plugin_flag, add_report_to, announce_overrides, build_config,
                     check_out_dir, user_errors)


@user_errors("solidrl train")
def cmd_train(args) -> int:
    from solidrl.probes.integrations import trackers
    from solidrl.trainer.loop import Trainer

    cfg = build_config(args, announce=False)  # every type, range, name, the device, model.path: before anything
    report_to = trackers.parse_report_to(args.report_to)
    trackers.check_installed(report_to)  # before any training: a missing extra is one line, exit 2
    out = Path(args.out)
    check_out_dir(out)
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; give one")
    if args.resume and not (out / "checkpoint" / "state.pt").exists():
        raise ConfigError(f"--resume: no checkpoint at {out / 'checkpoint' / 'state.pt'}; run without --resume")
    if out.exists() and any(out.iterdir()) and not args.resume and not args.overwrite:
        raise ConfigError(f"--out {out} is not empty; pass --resume to continue it, --overwrite to "
                          "replace its run, or another directory")
    if args.validate:
        if cfg.model.path:
            from solidrl.trainer.model import load_pretrained

            load_pretrained(cfg.model.path, cfg.model.dtype, "cpu")  # ModelLoadError: one line, exit 2
        announce_overrides(args)
        print(f"valid: {cfg.task.name} on {cfg.model.path or cfg.model.size}, {cfg.run.steps} steps of "
              f"{cfg.rollout.prompts_per_step} x {cfg.rollout.group_size} sequences; nothing was written")
        return 0
    announce_overrides(args)
    if args.quiet:  # no progress bars at all: transformers' weight-loading bar too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    t = Trainer(cfg, out, progress=not args.quiet, resume=args.resume, overwrite=args.overwrite)
    if cfg.probes.enabled:
        attach_probes(t)
    sent = trackers.attach(t, report_to)
    try:
        status = t.run()
    finally:
        if sent is not None:
            sent.close()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if rows:
        last = rows[-1]
        keys = ["reward/accuracy", "entropy/token_mean", "kl/ref_exact", "grad/norm"]
        summary = ", ".join(f"{k}={last[k]:.4g}" for k in keys if isinstance(last.get(k), (int, float)))
        print(f"{status['status']} after {len(rows)} steps: {summary}; run dir {out}")
    if status["status"] == "collapsed":
        print(f"collapse ({status.get('kind')}) at step {status['step']}: {status['reason']}")
    return 0 if status["status"] == "finished" else 1


@user_errors("solidrl sft")
def cmd_sft(args) -> int:
    from solidrl.trainer.sft import cold_start, run_sft

    cfg = build_config(args)
    d = run_sft(cfg, Path(args.out), progress=not args.quiet) if args.out else cold_start(cfg, not args.quiet)
    info = json.loads((d / "sft.json").read_text())
    print(f"cold start {info['task']}/{info['size']}: {info['steps']} SFT steps, pass@1 at T=1 "
          f"{info['final_pass@1_t1']:.3f} -> {d}")
    return 0


@user_errors("solidrl tasks")
def cmd_tasks(args) -> int:
    from solidrl.trainer.tasks import TASKS

    for name in TASKS.names():
        cls = TASKS.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:16s} max_new_tokens={cls.max_new_tokens:<3d} {doc}")
    return 0


def _setup_train(p):
    add_common(p)
    p.add_argument("--steps", type=int)
    p.add_argument("--out", required=True, help="run directory (config.json, metrics.jsonl, stats/, checkpoint/)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a non-empty --out (removes the old run's config, metrics, status, stats, checkpoint)")
    p.add_argument("--validate", action="store_true",
                   help="check the config, --out and the model without training; exit 0 valid, 2 not; writes nothing")
    add_report_to(p)
    p.set_defaults(func=cmd_train)


def _setup_sft(p):
    add_common(p)
    p.add_argument("--out", help="where to save the cold start (default: the cache, reused by train)")
    p.set_defaults(func=cmd_sft)


def _setup_tasks(p):
    p.set_defaults(func=cmd_tasks)



# name -> (setup(subparser), help); the order is `solidrl --help`'s
COMMANDS = {
    "train": (_setup_train, "run the policy-gradient trainer with probes on every step"),
    "sft": (_setup_sft, "cold-start a named model size on a task (cached)"),
    "tasks": (_setup_tasks, "list the registered tasks"),
    "audit": (audit.setup, audit.HELP),
    "ladder": (ladder.setup, ladder.HELP),
    "transfer": (transfer.setup, transfer.HELP),
    "leadtime": (leadtime.setup, leadtime.HELP),
    "plot": (plot.setup, plot.HELP),
}


def main(argv=None) -> int:
    parser = OneLineParser(prog="solidrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (setup, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        setup(sp)
        add_plugin_flag(sp)  # every command: --plugin FILE (docs/plugins.md)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""`solidrl` command line: train, sft, tasks (and the commands other modules add).

Every user mistake (unknown name, bad override, model directory that does not load, NaN in
training) ends with one line `solidrl: error: ...` and exit code 2 (1 for a failed run), never a
traceback; nothing already written in the run directory is removed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from solidrl.theory.registry import UnknownNameError
from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides, parse_set_args
from solidrl.trainer.model import ModelLoadError


def user_errors(prog: str) -> Callable:
    """Decorator: turn known user-facing exceptions into one line on stderr + exit code."""

    def deco(fn):
        def wrapped(*a, **kw):
            from solidrl.trainer.loop import TrainingError

            try:
                return fn(*a, **kw)
            except (ConfigError, UnknownNameError, ModelLoadError, FileNotFoundError) as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                return 2
            except TrainingError as e:
                print(f"{prog}: run failed: {e}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print(f"{prog}: interrupted; what was written so far is kept", file=sys.stderr)
                return 130

        return wrapped

    return deco


def build_config(args) -> TrainConfig:
    """Config from the common flags (--task, --model-size, --model, --steps, --seed) and --set."""
    over: dict[str, object] = {}
    if getattr(args, "config", None):
        import tomllib

        from solidrl.trainer.config import flatten

        try:
            over.update(flatten(tomllib.loads(Path(args.config).read_text())))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{args.config}: not valid TOML ({e})") from None
    for flag, key in (("task", "task.name"), ("model_size", "model.size"), ("model", "model.path"),
                      ("steps", "run.steps"), ("seed", "run.seed"), ("device", "run.device")):
        v = getattr(args, flag, None)
        if v is not None:
            over[key] = v
    over.update(parse_set_args(getattr(args, "set", None) or []))
    cfg = apply_overrides(TrainConfig(), over)
    changed = {k: v for k, v in over.items()}
    if changed and not getattr(args, "quiet", False):
        print("overrides: " + ", ".join(f"{k}={v}" for k, v in changed.items()), file=sys.stderr)
    return cfg


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="registered task name (see `solidrl tasks`)")
    p.add_argument("--model-size", help="named model size: nano, micro, small")
    p.add_argument("--model", help="a local Hugging Face model directory (or a registered model name)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--config", help="a TOML file of overrides ([algo] advantage = 'rloo', ...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config field by dotted name, e.g. --set algo.advantage=rloo (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def attach_probes(t) -> None:
    """Every probe `solidrl train` runs: the recorder, the off-policy probe, the diagnostics, and
    every probes.audit_every steps the loss-term audit and the consistency check."""
    from solidrl.probes import consistency, diagnostics, loss_audit, offpolicy
    from solidrl.probes.recorder import attach

    attach(t)
    offpolicy.attach(t)  # after the recorder: it reuses the recorder's kl/step
    if t.cfg.probes.audit_every > 0:
        loss_audit.attach(t)
        consistency.attach(t)
    diagnostics.attach(t)


@user_errors("solidrl train")
def cmd_train(args) -> int:
    from solidrl.trainer.loop import Trainer

    cfg = build_config(args)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.resume and not args.overwrite:
        raise ConfigError(f"--out {out} is not empty; pass --resume to continue it, --overwrite to "
                          "replace its metrics, or another directory")
    t = Trainer(cfg, out, progress=not args.quiet, resume=args.resume)
    if cfg.probes.enabled:
        attach_probes(t)
    status = t.run()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if rows:
        last = rows[-1]
        keys = ["reward/accuracy", "entropy/token_mean", "kl/ref_exact", "grad/norm"]
        summary = ", ".join(f"{k}={last[k]:.4g}" for k in keys if k in last)
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


COMMANDS: dict[str, tuple[Callable, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str):
    """Register a subcommand: `@command("audit", "...")` on a function taking the subparser."""

    def deco(setup):
        COMMANDS[name] = (None, setup, help)
        return setup

    return deco


def _setup_train(p):
    _common(p)
    p.add_argument("--steps", type=int)
    p.add_argument("--out", required=True, help="run directory (config.json, metrics.jsonl, stats/, checkpoint/)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a non-empty --out")
    p.set_defaults(func=cmd_train)


def _setup_sft(p):
    _common(p)
    p.add_argument("--out", help="where to save the cold start (default: the cache, reused by train)")
    p.set_defaults(func=cmd_sft)


def _setup_tasks(p):
    p.set_defaults(func=cmd_tasks)


command("train", "run the policy-gradient trainer with probes on every step")(_setup_train)
command("sft", "cold-start a named model size on a task (cached)")(_setup_sft)
command("tasks", "list the registered tasks")(_setup_tasks)


def _load_extensions() -> None:
    """Subcommands defined in other modules register themselves on import."""
    import importlib

    for mod in ("solidrl.probes.audit", "solidrl.probes.ladder", "solidrl.probes.transfer",
                "solidrl.probes.leadtime", "solidrl.probes.plot"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def main(argv=None) -> int:
    _load_extensions()
    parser = argparse.ArgumentParser(prog="solidrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (_, setup, help_) in COMMANDS.items():
        setup(sub.add_parser(name, help=help_, description=help_))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

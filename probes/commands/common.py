"""What every `solidrl` subcommand shares: one-line user errors, and the config from the common flags.

Every user mistake (unknown name, bad override, model directory that does not load, a malformed
file) ends with one line `<prog>: error: ...` and exit code 2 (1 for a failed run), never a
traceback; nothing already written is removed.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable

from solidrl.probes.errors import InputError
from solidrl.theory.registry import UnknownNameError
from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides, parse_set_args
from solidrl.trainer.loop import TrainingError
from solidrl.trainer.model import ModelLoadError

__all__ = ["user_errors", "build_config", "add_common", "add_report_to", "add_plugin_flag", "load_plugin_args"]


def user_errors(prog: str) -> Callable:
    """Decorator: turn known user-facing exceptions into one line on stderr + exit code."""

    def deco(fn):
        def wrapped(*a, **kw):
            try:
                if a and isinstance(a[0], argparse.Namespace):
                    load_plugin_args(a[0])
                return fn(*a, **kw)
            except (ConfigError, UnknownNameError, ModelLoadError, FileNotFoundError, InputError) as e:
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
    from solidrl.trainer import plugins

    cfg = dataclasses.replace(cfg, plugins=tuple((r["path"], r["sha256"]) for r in plugins.loaded()))
    changed = {k: v for k, v in over.items()}
    if changed and not getattr(args, "quiet", False):
        print("overrides: " + ", ".join(f"{k}={v}" for k, v in changed.items()), file=sys.stderr)
    return cfg


def add_plugin_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", metavar="FILE", default=None,
                   help="a Python file registering advantages, losses, tasks, predictors... (repeatable; docs/plugins.md)")


def load_plugin_args(args) -> None:
    """Import the --plugin files, then the plugins recorded in the config.json of the runs args names.

    A run directory (args.run_dir / args.run_dirs, or args.out with --resume) whose config.json records
    plugins gets them back without naming them again, after checking each file's sha256 (PluginError:
    one line, exit 2, when one changed or is missing).
    """
    import json

    from solidrl.trainer import plugins

    plugins.load_all(getattr(args, "plugin", None) or [])
    dirs = [getattr(args, "run_dir", None), *(getattr(args, "run_dirs", None) or [])]
    if getattr(args, "resume", False):
        dirs.append(getattr(args, "out", None))
    for d in dirs:
        cfg_file = Path(d) / "config.json" if d else None
        if cfg_file is None or not cfg_file.is_file():
            continue
        try:
            recs = json.loads(cfg_file.read_text()).get("plugins") or []
        except (json.JSONDecodeError, AttributeError):
            continue  # the command that reads it says what is wrong with it
        plugins.verify(recs, str(cfg_file))


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="registered task name (see `solidrl tasks`)")
    p.add_argument("--model-size", help="named model size: nano, micro, small")
    p.add_argument("--model", help="a local Hugging Face model directory (or a registered model name)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--config", help="a TOML file of overrides ([algo] advantage = 'rloo', ...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config field by dotted name, e.g. --set algo.advantage=rloo (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_report_to(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-to", nargs="+", metavar="NAME",
                   help="send the config and every metrics row to experiment trackers, as transformers' report_to: "
                        "tensorboard, wandb, trackio (or none); each is an extra: pip install -e '.[NAME]'; "
                        "see probes/integrations/trackers.py")

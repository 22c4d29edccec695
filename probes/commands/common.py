"""What every `solidrl` subcommand shares: one-line user errors, and the config from the common flags.

Every user mistake (unknown name, bad override, model directory that does not load, a malformed
file) ends with one line `<prog>: error: ...` and exit code 2 (1 for a failed run), never a
traceback; nothing already written is removed.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
from pathlib import Path
from typing import Callable

from solidrl.probes.errors import InputError
from solidrl.theory.registry import UnknownNameError
from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides, parse_set_args
from solidrl.trainer.loop import TrainingError
from solidrl.trainer.model import ModelLoadError

__all__ = ["user_errors", "build_config", "add_common", "check_out_dir", "read_toml", "OneLineParser", "one_line",
           "add_report_to", "add_plugin_flag", "load_plugin_args"]

# OSErrors that are the user's environment (an output folder that cannot be written, a full disk),
# not a bug: one line and exit 2. Any other OSError keeps its traceback.
USER_OS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                  errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}


def one_line(msg: object, limit: int = 2000) -> str:
    """A message as one line: newlines (a user's key or value may hold them) shown as \\n, cut at `limit`."""
    s = str(msg).replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def os_error_line(prog: str, e: OSError) -> str:
    """The one line for an OSError of the user's environment (USER_OS_ERRNOS): what, where, the fix."""
    where = f" {e.filename}" if e.filename else ""
    return (f"{prog}: error: cannot write{one_line(where)}: {e.strerror or e}; free space or choose another "
            "--out (what was written before is kept)")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (`prog: error: ...; see --help`) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see {self.prog} --help\n")


def user_errors(prog: str) -> Callable:
    """Decorator: turn known user-facing exceptions into one line on stderr + exit code."""

    def deco(fn):
        def wrapped(*a, **kw):
            try:
                if a and isinstance(a[0], argparse.Namespace):
                    load_plugin_args(a[0])
                return fn(*a, **kw)
            except (ConfigError, UnknownNameError, ModelLoadError, FileNotFoundError, InputError) as e:
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
                return 2
            except TrainingError as e:
                print(f"{prog}: run failed: {one_line(e)}", file=sys.stderr)
                return 1
            except OSError as e:
                if e.errno not in USER_OS_ERRNOS:
                    raise
                print(os_error_line(prog, e), file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted; what was written so far is kept", file=sys.stderr)
                return 130

        return wrapped

    return deco


def read_toml(path: str, what: str = "--config") -> dict:
    """A TOML file as a dict; every way it can be unreadable (missing, a directory, not UTF-8, not
    TOML, nested too deep for the parser) is a one-line ConfigError."""
    import tomllib

    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise ConfigError(f"{what} {path}: is a directory; give a TOML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read the file ({e.strerror or type(e).__name__})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path}: not valid TOML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{what} {path}: nested too deeply to be a config file") from None


def check_out_dir(out: Path, flag: str = "--out") -> None:
    """Refuse an output directory that cannot be one, before anything is created: a file, or a folder
    (or its nearest existing parent) this process cannot write."""
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{flag} {out} is a file, not a directory; give a directory")
        probe = out
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise ConfigError(f"{flag} {out}: {probe} is a file, so the directory cannot be made")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {out}: {probe} is not writable; choose another directory")
    except OSError as e:
        raise ConfigError(f"{flag} {out}: {e.strerror or type(e).__name__}") from None


def build_config(args, validated: bool = True, announce: bool = True) -> TrainConfig:
    """Config from the common flags (--task, --model-size, --model, --steps, --seed) and --set,
    validated (trainer.config.validate and the registry names) unless `validated` is False."""
    over: dict[str, object] = {}
    if getattr(args, "config", None):
        from solidrl.trainer.config import flatten

        over.update(flatten(read_toml(args.config)))
    for flag, key in (("task", "task.name"), ("model_size", "model.size"), ("model", "model.path"),
                      ("steps", "run.steps"), ("seed", "run.seed"), ("device", "run.device")):
        v = getattr(args, flag, None)
        if v is not None:
            over[key] = v
    over.update(parse_set_args(getattr(args, "set", None) or []))
    cfg = apply_overrides(TrainConfig(), over)
    from solidrl.trainer import plugins

    cfg = dataclasses.replace(cfg, plugins=tuple((r["path"], r["sha256"]) for r in plugins.loaded()))
    if validated:
        from solidrl.trainer.config import validate
        from solidrl.trainer.loop import check_names

        validate(cfg)
        check_names(cfg)
    changed = {k: v for k, v in over.items()}
    args.overrides_line = "overrides: " + ", ".join(f"{k}={v}" for k, v in changed.items()) if changed else ""
    if announce:
        announce_overrides(args)
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


def announce_overrides(args) -> None:
    """The `overrides: ...` line on stderr (after every check passed, so a refusal stays one line)."""
    if getattr(args, "overrides_line", "") and not getattr(args, "quiet", False):
        print(args.overrides_line, file=sys.stderr)


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

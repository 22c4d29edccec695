"""Plugin files: ordinary Python files a user names on purpose, imported to register entries.

    solidrl train --plugin my_idea.py ...        probe-check file.toml   (plugins = ["my_idea.py"])

A plugin is imported like a conftest.py: `importlib.util.spec_from_file_location` under a private
module name (`solidrl_plugin_<hash>`), while theory.registry records every registration as coming
from that file. It registers with the public decorators (docs/plugins.md), into the same registries
the built-ins use. Nothing from a TOML file or the command line is ever evaluated: the only code run
is the file itself.

Errors are one line naming the file and the line (PluginError, a ConfigError, so every command exits
2): a syntax error, an import error or any exception at import (a name colliding with a built-in
entry is one: RegistryCollision raised by the decorator line). A file that fails registers nothing
(its partial registrations are removed).

Each loaded plugin is recorded as {"path": absolute path, "sha256": content hash}; config.json and
plan.json keep that record, and `verify` refuses a file that changed or went missing.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Iterable, Optional

from solidrl.theory import registry as R

from .config import ConfigError

__all__ = ["PluginError", "load", "load_all", "verify", "loaded", "unload_all", "sha256"]

_LOADED: dict[str, dict] = {}  # absolute path -> {"path", "sha256", "module"}


class PluginError(ConfigError):
    """A plugin file that cannot be used; the message is one line naming the file (and the line)."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _where(path: Path, e: BaseException) -> str:
    """'FILE line N' for the innermost frame of the exception that is in the plugin file."""
    if isinstance(e, SyntaxError) and e.filename and Path(e.filename).resolve() == path:
        return f"{path} line {e.lineno}"
    line = None
    for fr in traceback.extract_tb(e.__traceback__):
        if fr.filename and Path(fr.filename).resolve() == path:
            line = fr.lineno
    return f"{path} line {line}" if line else str(path)


def load(path: str | Path, base: Optional[Path] = None) -> dict:
    """Import one plugin file (relative paths against `base`, default the current directory).

    Returns its record {"path", "sha256"}. Loading the same unchanged file again is a no-op; a
    different file registering an existing name is a collision.
    """
    p = Path(path)
    if not p.is_absolute() and base is not None:
        p = base / p
    p = p.resolve()
    if not p.is_file():
        raise PluginError(f"plugin {path}: no such file ({p})")
    if p.suffix != ".py":
        raise PluginError(f"plugin {path}: a plugin is a Python file ending in .py")
    digest = sha256(p)
    key = str(p)
    if key in _LOADED:
        if _LOADED[key]["sha256"] == digest:
            return {"path": key, "sha256": digest}
        raise PluginError(f"plugin {p} changed since it was loaded in this process; restart to load the new version")
    name = f"solidrl_plugin_{digest[:16]}"
    spec = importlib.util.spec_from_file_location(name, p)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses and pickling look the module up while it executes
    try:
        with R.loading(key):
            spec.loader.exec_module(mod)
    except BaseException as e:  # noqa: BLE001 - any failure at import is the plugin's; report it in one line
        sys.modules.pop(name, None)
        for reg in R.registries():
            reg.remove_origin(key)
        if isinstance(e, KeyboardInterrupt):
            raise
        msg = e.msg if isinstance(e, SyntaxError) else str(e)
        first = (msg.strip().splitlines() or [""])[0]
        raise PluginError(f"plugin {_where(p, e)}: {type(e).__name__}: {first}") from None
    _LOADED[key] = {"path": key, "sha256": digest, "module": mod}
    return {"path": key, "sha256": digest}


def load_all(paths: Iterable[str | Path], base: Optional[Path] = None) -> tuple[dict, ...]:
    """Load several plugin files in order; their records, without duplicates."""
    out: dict[str, dict] = {}
    for p in paths:
        rec = load(p, base)
        out[rec["path"]] = rec
    return tuple(out.values())


def verify(records: Iterable[dict], what: str) -> tuple[dict, ...]:
    """Load recorded plugins after checking each still exists with the recorded content hash."""
    recs = []
    for r in records:
        p = Path(r["path"])
        if not p.is_file():
            raise PluginError(f"{what}: plugin {p} is missing (the run was made with it, sha256 {r['sha256'][:12]}); "
                              "restore the file or rerun")
        if sha256(p) != r["sha256"]:
            raise PluginError(f"{what}: plugin {p} changed since the run (sha256 {r['sha256'][:12]} recorded, "
                              f"{sha256(p)[:12]} now); restore it or rerun")
        recs.append(load(p))
    return tuple(recs)


def loaded() -> tuple[dict, ...]:
    """Records of every plugin loaded in this process, in load order."""
    return tuple({"path": v["path"], "sha256": v["sha256"]} for v in _LOADED.values())


def unload_all() -> None:
    """Remove every plugin's entries from every registry (tests; a process normally keeps them)."""
    for key, v in list(_LOADED.items()):
        for reg in R.registries():
            reg.remove_origin(key)
        sys.modules.pop(v["module"].__name__, None)
    _LOADED.clear()

"""Atomic file writes and whole-line appends: a reader (or a crash, or a full disk) never sees half a file.

`atomic_write_text(path, text)` writes a temporary file in the same folder, fsyncs it and renames it
over `path` with os.replace (atomic on POSIX within one file system), so `path` holds either the old
content or the new one, never a prefix. When any step fails the temporary file is removed and the
previous file is untouched; the OSError propagates (the commands turn ENOSPC/EACCES into one line).

`append_line(f, line)` writes one JSON row as a single write call, so a crash leaves at most one torn
last line, which `split_torn_tail` drops (and `--resume` says so).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

__all__ = ["atomic_write_text", "atomic_write_json", "append_line", "split_torn_tail", "clear_run_dir", "RUN_DIR_ENTRIES"]


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: str | Path, obj: Any, **kw) -> None:
    """json.dumps(obj, indent=2, **kw) written atomically (the text is built before the file is touched)."""
    atomic_write_text(path, json.dumps(obj, indent=kw.pop("indent", 2), **kw))


def append_line(f, line: str) -> None:
    """Append `line` + newline to an open text file in one write call, then flush."""
    f.write(line + "\n")
    f.flush()


def split_torn_tail(text: str, before_step: Optional[int] = None) -> tuple[list[dict], bool]:
    """(rows, torn): the JSON rows of a metrics.jsonl text, without a last line that is not a whole JSON
    object (a write cut short by a crash or a full disk); with `before_step`, only rows of earlier steps."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    torn = False
    if lines:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines, torn = lines[:-1], True
    rows = [r for r in map(json.loads, lines) if isinstance(r, dict) and isinstance(r.get("step"), int)]
    return [r for r in rows if before_step is None or r["step"] < before_step], torn


# What a run directory holds (written by the trainer, the probes and probe-check's shadow runs):
# `--overwrite` removes exactly these, so an old run's stats never sit beside a new run's rows.
RUN_DIR_ENTRIES = ("config.json", "metrics.jsonl", "status.json", "stats", "checkpoint")
RUN_DIR_GLOBS = ("cf-*",)


def clear_run_dir(out: Path) -> None:
    """Remove a previous run's files from `out` (only the names a run writes; anything else stays)."""
    victims = [out / n for n in RUN_DIR_ENTRIES] + [q for g in RUN_DIR_GLOBS for q in out.glob(g)]
    for q in victims:
        if q.is_dir() and not q.is_symlink():
            shutil.rmtree(q)
        elif q.exists() or q.is_symlink():
            q.unlink()

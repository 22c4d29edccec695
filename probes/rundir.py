"""Reading a run directory (`solidrl train`'s or probe-check's `runs/<arm>/seed<s>/`): rows and series.

Every command that reads runs uses these, so one run directory means one thing everywhere
(docs/architecture.md, "Run directories"). A run killed mid-write leaves a torn last line in
metrics.jsonl: `read_rows` keeps the complete rows before it.

Three views of one metric, named by what they return:
  by_step(rows, key, n)  -> ndarray [n], NaN where a step lacks the key (judging, the ladder)
  points(rows, key)      -> (steps, values) of the rows with a finite value (plots)
  step_map(rows, key)    -> {step: value} of the rows with a finite value (lead times)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["read_rows", "by_step", "points", "step_map", "is_number"]


def read_rows(run_dir: str | Path) -> list[dict]:
    """The complete rows of run_dir/metrics.jsonl in file order ([] when the file is absent)."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a run killed mid-write: keep the complete rows
    return rows


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def by_step(rows: list[dict], key: str, n: int) -> np.ndarray:
    """[n] values of `key` by step (NaN where the row or the key is absent or not a number)."""
    x = np.full(n, np.nan)
    for r in rows:
        s = r.get("step")
        v = r.get(key)
        if isinstance(s, int) and 0 <= s < n and is_number(v):
            x[s] = float(v)
    return x


def points(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that carry a finite `key`."""
    pts = [(r["step"], float(r[key])) for r in rows if is_number(r.get(key)) and math.isfinite(float(r[key]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def step_map(rows: list[dict], key: str) -> dict[int, float]:
    """{step: value} of the rows that carry a finite `key`."""
    return dict(zip(*points(rows, key)))

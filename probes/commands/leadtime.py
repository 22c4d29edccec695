"""Early warning, stated as hypotheses: does one metric lead another, and by how many steps?

`solidrl leadtime HYP.toml RUN_DIR [RUN_DIR ...]` judges a lead-time hypothesis (hypotheses/early_warning/)
on the rows of finished runs and prints the predicted and observed lead with a verdict. Two methods:

  spikes  a step t is a spike of m when (m_t - median of the W steps before) / (1.4826 MAD of them) > z
          and m_t >= min_ratio x that median
          (a robust z-score; no spike in the first W steps). For each spike of the lagging metric at t the
          lead is t - s, s the latest spike of the leading metric with t - max_lead <= s <= t.
          observed lead = median lead over the lagging spikes that have one; hit_frac = their share.
          confirmed: hit_frac >= min_hit_frac and observed lead >= predicted_lead;
          refuted: lagging spikes exist but the rule fails; inconclusive: no spike of the lagging metric.
  xcorr   c(k) = Pearson corr(sign * x_t, y_{t+k}) over the steps where both exist, k in [-max_lead, max_lead]
          (k > 0: x leads y by k steps). observed lead = argmax_k |c(k)| (the strongest coupling, either sign).
          confirmed: observed lead == predicted_lead and c(lead) >= min_r; inconclusive: fewer than 8 pairs.

Runs are pooled: spikes are counted per run, correlations over the concatenated pairs of every run.
Left out: multiple-testing corrections (one hypothesis, one lag range); spikes of lagging metrics that
the leading metric's own definition causes (the file's claim must say why the lead is not a tautology).
Files here use their own schema and live outside hypotheses/*.toml, which probe-check parses.
"""
from __future__ import annotations

import json
import math
import statistics
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from solidrl.probes.rundir import step_map

from .common import user_errors

__all__ = ["LeadHypothesis", "load", "spikes", "spike_leads", "xcorr", "judge"]


@dataclass(frozen=True)
class LeadHypothesis:
    name: str
    claim: str
    leading: str
    lagging: str
    method: str = "spikes"
    predicted_lead: int = 1
    max_lead: int = 3
    sign: float = 1.0
    z: float = 3.0
    window: int = 5
    min_ratio: float = 1.5
    min_hit_frac: float = 0.5
    min_r: float = 0.3


def load(path: str | Path) -> LeadHypothesis:
    d = tomllib.loads(Path(path).read_text())
    known = set(LeadHypothesis.__dataclass_fields__)
    extra = set(d) - known - {"references", "verdicts", "derivation"}
    if extra:
        raise ValueError(f"{path}: unknown keys {sorted(extra)}; known: {sorted(known)}")
    h = LeadHypothesis(**{k: v for k, v in d.items() if k in known})
    if h.method not in ("spikes", "xcorr"):
        raise ValueError(f"{path}: method {h.method!r} unknown; known: spikes, xcorr")
    return h


def spikes(values: dict[int, float], z: float, window: int, min_ratio: float = 1.5) -> list[int]:
    """Steps whose robust z-score against the `window` steps before exceeds z and whose value is at least
    min_ratio times their median (a flat history must not turn a 5% wiggle into a spike)."""
    steps = sorted(values)
    out = []
    for i in range(window, len(steps)):
        prev = [values[s] for s in steps[i - window:i]]
        med = statistics.median(prev)
        # MAD floored at 1e-6 |median|: a flat history must not turn rounding noise into spikes
        mad = max(1.4826 * statistics.median(abs(v - med) for v in prev), 1e-6 * abs(med), 1e-12)
        x = values[steps[i]]
        if (x - med) / mad > z and x >= min_ratio * med:
            out.append(steps[i])
    return out


def spike_leads(lead_spikes: list[int], lag_spikes: list[int], max_lead: int) -> list[Optional[int]]:
    """Per lagging spike: t - (latest leading spike s in [t - max_lead, t]), or None."""
    out = []
    for t in lag_spikes:
        cands = [s for s in lead_spikes if t - max_lead <= s <= t]
        out.append(t - max(cands) if cands else None)
    return out


def _pearson(a: list[float], b: list[float]) -> Optional[float]:
    if len(a) < 3:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if va == 0 or vb == 0:
        return None
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / math.sqrt(va * vb)


def xcorr(runs: list[tuple[dict[int, float], dict[int, float]]], max_lead: int,
          sign: float = 1.0) -> dict[int, tuple[Optional[float], int]]:
    """k -> (corr(sign x_t, y_{t+k}) pooled over runs, number of pairs)."""
    out = {}
    for k in range(-max_lead, max_lead + 1):
        a, b = [], []
        for x, y in runs:
            for t, v in x.items():
                if t + k in y:
                    a.append(sign * v)
                    b.append(y[t + k])
        out[k] = (_pearson(a, b), len(a))
    return out


def judge(h: LeadHypothesis, run_rows: list[list[dict]]) -> dict:
    """The verdict dict: verdict, predicted_lead, observed_lead and the method's evidence."""
    pairs = [(step_map(rows, h.leading), step_map(rows, h.lagging)) for rows in run_rows]
    res: dict = {"name": h.name, "method": h.method, "leading": h.leading, "lagging": h.lagging,
                 "predicted_lead": h.predicted_lead, "runs": len(run_rows)}
    if h.method == "spikes":
        leads, n_lag, n_lead = [], 0, 0
        for x, y in pairs:
            sx, sy = (spikes(v, h.z, h.window, h.min_ratio) for v in (x, y))
            n_lag += len(sy)
            n_lead += len(sx)
            leads += spike_leads(sx, sy, h.max_lead)
        hits = [v for v in leads if v is not None]
        res.update({"lagging_spikes": n_lag, "leading_spikes": n_lead,
                    "hit_frac": len(hits) / n_lag if n_lag else None,
                    "observed_lead": statistics.median(hits) if hits else None})
        if not n_lag:
            res["verdict"] = "inconclusive"
            res["why"] = f"no spike of {h.lagging} (robust z > {h.z:g})"
        else:
            ok = res["hit_frac"] >= h.min_hit_frac and hits and res["observed_lead"] >= h.predicted_lead
            res["verdict"] = "confirmed" if ok else "refuted"
            res["why"] = (f"{len(hits)}/{n_lag} {h.lagging} spikes preceded by a {h.leading} spike within "
                          f"{h.max_lead} steps (need >= {h.min_hit_frac:.0%}, lead >= {h.predicted_lead})")
        return res
    c = xcorr(pairs, h.max_lead, h.sign)
    res["xcorr"] = {str(k): (None if r is None else round(r, 4)) for k, (r, _) in c.items()}
    valid = {k: r for k, (r, n) in c.items() if r is not None and n >= 8}
    if not valid:
        res.update(verdict="inconclusive", observed_lead=None, why="fewer than 8 step pairs with variance")
        return res
    best = max(valid, key=lambda k: abs(valid[k]))  # the strongest coupling, either sign
    res["observed_lead"] = best
    res["r_at_observed"] = round(valid[best], 4)
    ok = best == h.predicted_lead and valid[best] >= h.min_r
    res["verdict"] = "confirmed" if ok else "refuted"
    sign = "" if valid[best] >= 0 else ", opposite to the predicted sign"
    res["why"] = (f"|corr| peaks at lead {best} (r = {valid[best]:.3f}{sign}); predicted lead {h.predicted_lead} "
                  f"with r >= {h.min_r:g}")
    return res


def _read_rows(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


@user_errors("solidrl leadtime")
def cmd_leadtime(args) -> int:
    h = load(args.hypothesis)
    res = judge(h, [_read_rows(d) for d in args.run_dirs])
    print(f"{h.name}: {res['verdict']} -- predicted lead {res['predicted_lead']}, observed "
          f"{res['observed_lead']} ({res['why']})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def setup(p) -> None:
    p.add_argument("hypothesis", help="a lead-time hypothesis file (hypotheses/early_warning/*.toml)")
    p.add_argument("run_dirs", nargs="+", help="run directories written by `solidrl train`")
    p.add_argument("--json", help="also write the verdict as JSON to this file")
    p.set_defaults(func=cmd_leadtime)


HELP = "judge a lead-time hypothesis (does metric X lead metric Y?) on finished runs"

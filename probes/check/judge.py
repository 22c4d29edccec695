"""probe-check's judging: the run directories' rows -> one report entry per prediction.

`judge_all(hyp, out, record)` reads the runs the record lists (RunData), judges every prediction
with the statistics of verdict.py, and returns the result dict that report.py writes and prints.
Predictor outputs a row lacks are computed after the fact from the run's stats/ files. Data flow:
docs/architecture.md.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from solidrl.probes.audit import audit_arm
from solidrl.probes.rundir import by_step, read_rows

from . import hypothesis as hyp_mod
from .hypothesis import Hypothesis, HypothesisError, Prediction, window_slice
from .run import USABLE
from .verdict import (Judgement, allowed_interval, judge_ab, judge_per_step, judge_trajectory,
                      judgement_dict)


class RunData:
    """Rows of the run directories, and predictor outputs computed after the fact from stats/ when needed."""

    def __init__(self, hyp: Hypothesis, out: Path, record: dict):
        self.hyp, self.out, self.record = hyp, out, record
        self.n = int(record["steps"])
        self._rows: dict[Path, list[dict]] = {}
        self._posthoc: dict[tuple[Path, str], dict[int, dict]] = {}

    def rows(self, d: Path) -> list[dict]:
        if d not in self._rows:
            self._rows[d] = read_rows(d)
        return self._rows[d]

    def runs(self, arm: str) -> dict[int, dict]:
        return {r["seed"]: r for r in self.record["runs"] if r["arm"] == arm}

    def metric(self, d: Path, key: str) -> np.ndarray:
        return by_step(self.rows(d), key, self.n)

    def predicted(self, d: Path, p: Prediction, key: str) -> np.ndarray:
        """The predictor's per-step output: from the rows, else computed from run_dir/stats/."""
        rows = self.rows(d)
        if any(key in r for r in rows):
            return by_step(rows, key, self.n)
        _, name, out = key.split("/", 2)
        reg = hyp_mod.predictor_registry()
        stats_dir = d / "stats"
        if reg is None or name not in reg or not stats_dir.is_dir():
            raise LookupError(f"{key} is not in the rows of {d} and there are no stats/ to compute it from")
        if (d, name) not in self._posthoc:
            import torch

            fn, vals = reg.get(name), {}
            for f in sorted(stats_dir.glob("step_*.pt")):
                try:
                    stats = torch.load(f, map_location="cpu", weights_only=True)
                except Exception as e:  # noqa: BLE001 - pickle payloads and damaged files: one line, exit 2
                    raise HypothesisError(str(f), "", f"refused: not a stats file this toolkit wrote (it needs "
                                                      f"pickle or is damaged: {type(e).__name__})") from None
                vals[int(f.stem.split("_")[1])] = {k: float(v) for k, v in fn(stats).items()}
            self._posthoc[(d, name)] = vals
        vals = self._posthoc[(d, name)]
        outs = sorted({k for v in vals.values() for k in v})
        if vals and out not in outs:
            raise HypothesisError(self.hyp.file, p.output_field, f"predictor {name!r} has no output {out!r}; its outputs: {', '.join(outs)}")
        x = np.full(self.n, np.nan)
        for s, v in vals.items():
            if 0 <= s < self.n and out in v:
                x[s] = v[out]
        return x



def _usable_seeds(data: RunData, arms: tuple[str, ...], notes: list[str]) -> list[int]:
    """Seeds whose runs finished (or stopped early on a collapse guard) in every arm the prediction reads."""
    seeds = None
    for a in arms:
        runs = data.runs(a)
        ok = {s for s, r in runs.items() if r["status"] in USABLE}
        failed = [r["dir"] for r in runs.values() if r["status"] not in USABLE]
        if failed:
            notes.append(f"failed run(s) left out: {', '.join(failed)} (see the runs table)")
        notes += [f"run {r['dir']} stopped early: {r['reason']}" for r in runs.values() if r["status"] == "collapsed"]
        seeds = ok if seeds is None else seeds & ok
    return sorted(seeds or [])


def _dirs(data: RunData, arm: str, seeds: list[int]) -> list[Path]:
    return [data.out / data.runs(arm)[s]["dir"] for s in seeds]


def _judge_per_step(p: Prediction, data: RunData, seeds: list[int], sl: slice, entry: dict) -> Judgement:
    d = _dirs(data, p.arm, seeds)
    pr = np.stack([data.predicted(x, p, p.pred_key) for x in d])[:, sl].ravel()
    ob = np.stack([data.metric(x, p.metric) for x in d])[:, sl].ravel()
    entry["_plot"] = {"type": "scatter", "predicted": pr.tolist(), "observed": ob.tolist(),
                      "xlabel": p.pred_key, "ylabel": p.metric}
    return judge_per_step(pr, ob, min_r=p.min_r, slope=p.slope, min_sign_agreement=p.min_sign_agreement,
                          max_median_rel_error=p.max_median_rel_error)


def _judge_trajectory(p: Prediction, data: RunData, seeds: list[int], sl: slice, entry: dict) -> Judgement:
    d = _dirs(data, p.arm, seeds)
    pr = np.stack([data.predicted(x, p, p.pred_key) for x in d])
    ob = np.stack([data.metric(x, p.observed) for x in d])
    # the predicted trajectory: the window's first observed value plus the accumulated one-step predictions
    acc = ob[:, sl.start:sl.start + 1] + np.concatenate(
        [np.zeros((len(seeds), 1)), np.nancumsum(pr[:, sl], 1)[:, :-1]], 1)
    entry["_plot"] = {"type": "trajectory", "metric": p.observed, "start": sl.start, "predicted": acc.tolist(),
                      "observed": ob.tolist(), "arm": p.arm, "pred_key": p.pred_key}
    return judge_trajectory(pr[:, sl], ob[:, sl], allowed=p.ratio)


def _judge_pair(p: Prediction, data: RunData, seeds: list[int], sl: slice, entry: dict,
                notes: list[str]) -> tuple[Judgement, Optional[float]]:
    """ab and counterfactual: treatment vs baseline, paired by seed and step. Returns (judgement, predictor value)."""
    b_arm, t_arm = p.arms
    d_b = _dirs(data, b_arm, seeds)
    d_t = _dirs(data, t_arm, seeds) if p.kind == "ab" else [x / f"cf-{t_arm}" for x in d_b]
    missing = [str(x.relative_to(data.out)) for x in d_t if not (x / "metrics.jsonl").exists()]
    if missing:
        raise LookupError(f"no rows in {', '.join(missing)} (these runs were made without this pair; "
                          "rerun without --from-run)")
    b = np.stack([data.metric(x, p.metric) for x in d_b])
    t = np.stack([data.metric(x, p.metric) for x in d_t])
    if p.kind == "counterfactual":
        match = np.stack([data.metric(x, "counterfactual/batch_match") for x in d_t])
        if (match == 0.0).any():
            notes.append(f"{int((match == 0.0).sum())} step(s) whose batches differed between the two updates "
                         "were left out")
        b, t = np.where(match == 1.0, b, np.nan), np.where(match == 1.0, t, np.nan)
        entry["pairs"] = int((match[:, sl] == 1.0).sum())
    pval, pr = None, p.predicted
    if pr.predictor:
        pv = np.stack([data.predicted(x, p, p.pred_key) for x in d_b])[:, sl]
        if not np.isfinite(pv).any():
            raise LookupError(f"{p.pred_key} has no finite value in the window")
        pval = entry["predictor_value"] = float(np.nanmean(pv))
    allowed = allowed_interval(pr.compare, pr.direction, pval if pval is not None else pr.value, pr.tolerance)
    stat = entry["stat"] = p.stat if p.kind == "ab" else "mean"
    resample = entry["resample"] = p.resample if p.kind == "ab" else "seeds_and_steps"
    if p.kind == "ab":
        entry["_plot"] = {"type": "ab", "metric": p.metric, "arms": [b_arm, t_arm], "baseline": b.tolist(),
                          "treatment": t.tolist(), "window": [sl.start, sl.stop]}
    else:
        entry["_plot"] = {"type": "cf", "metric": p.metric, "arms": [b_arm, t_arm],
                          "baseline": b[:, sl].ravel().tolist(), "treatment": t[:, sl].ravel().tolist(),
                          "compare": pr.compare, "value": pval if pval is not None else pr.value}
    return judge_ab(b[:, sl], t[:, sl], compare=pr.compare, allowed=allowed, stat=stat, resample=resample), pval


def judge_prediction(p: Prediction, data: RunData) -> dict[str, Any]:
    """Judge one prediction on the run data; returns its report entry (and plot data under '_plot')."""
    notes: list[str] = []
    sl = window_slice(p, data.n)
    entry: dict[str, Any] = {"index": p.index, "label": p.label, "kind": p.kind, "metric": p.metric,
                             "arms": list(p.arms_used()), "window": [sl.start, sl.stop], "note": p.note}
    seeds = entry["seeds"] = _usable_seeds(data, p.arms_used() if p.kind != "counterfactual" else p.arms[:1], notes)
    pval = None
    try:
        if not seeds:
            raise LookupError("no usable run for this prediction")
        if p.kind == "per_step":
            j = _judge_per_step(p, data, seeds, sl, entry)
        elif p.kind == "trajectory":
            j = _judge_trajectory(p, data, seeds, sl, entry)
        else:
            j, pval = _judge_pair(p, data, seeds, sl, entry, notes)
    except LookupError as e:  # the data a prediction needs are not there: it cannot be judged
        entry.update(verdict="inconclusive", criteria=[], notes=notes + [str(e).strip("'\"")],
                     predicted=_pred_text(p, None), observed="n/a")
        return entry
    jd = judgement_dict(j)
    jd["notes"] = notes + jd["notes"]
    entry.update(jd, predicted=_pred_text(p, pval), observed=_obs_text(j))
    return entry


def _pred_text(p: Prediction, pval: Optional[float]) -> str:
    if p.kind == "per_step":
        parts = []
        if p.min_r is not None:
            parts.append(f"r ≥ {p.min_r:g}")
        if p.slope is not None:
            parts.append(f"slope ∈ [{p.slope[0]:g}, {p.slope[1]:g}]")
        if p.min_sign_agreement is not None:
            parts.append(f"sign agree ≥ {p.min_sign_agreement:g}")
        if p.max_median_rel_error is not None:
            parts.append(f"med rel err ≤ {p.max_median_rel_error:g}")
        return f"{p.pred_key}: " + ", ".join(parts)
    if p.kind == "trajectory":
        return f"Σ {p.pred_key} / Δ{p.observed} ∈ [{p.ratio[0]:g}, {p.ratio[1]:g}]"
    pr = p.predicted
    if pr.compare == "direction":
        return f"T − B {'> 0' if pr.direction == 'increase' else '< 0'} ({pr.direction})"
    sym = "T / B" if pr.compare == "ratio" else "T − B"
    if pr.predictor:
        v = "?" if pval is None else f"{pval:.4g}"
        return f"{sym} = {v} ± {pr.tolerance:g} (pred/{pr.predictor}/{pr.output})"
    return f"{sym} = {pr.value:g} ± {pr.tolerance:g}"


def _fmt(x: Optional[float]) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _obs_text(j: Judgement) -> str:
    return "; ".join(f"{c.name} = {_fmt(c.estimate.value)} [{_fmt(c.estimate.lo)}, {_fmt(c.estimate.hi)}]"
                     for c in j.criteria)


def judge_all(hyp: Hypothesis, out: Path, record: dict) -> dict[str, Any]:
    data = RunData(hyp, out, record)
    preds = [judge_prediction(p, data) for p in hyp.predictions]
    counts = {v: sum(e["verdict"] == v for e in preds) for v in ("confirmed", "refuted", "inconclusive")}
    failed = [r for r in record["runs"] if r["status"] not in USABLE]
    code = 0 if counts["confirmed"] == len(preds) and not failed else 1
    runs = [dict(r, abs_dir=str((out / r["dir"]).resolve())) for r in record["runs"]]
    audit = audit_arm(out, record["runs"], hyp.arm_names[0])  # warn when the baseline is not the perfect one
    for e in preds:
        if audit["note"] and audit["arm"] in e["arms"]:
            e.setdefault("notes", []).append(audit["note"])
    return {"hypothesis": {"name": hyp.name, "file": hyp.file, "claim": hyp.claim.strip(),
                           "derivation": hyp.derivation.strip(), "references": list(hyp.references),
                           "expected": hyp.expected.strip()},
            "mode": record.get("mode", "default"), "steps": record["steps"], "seeds": record["seeds"],
            "overrides": record.get("overrides", {}), "arms": {a: dict(o) for a, o in hyp.arms},
            "runs": runs, "failed_runs": [r["dir"] for r in failed],
            "predictions": preds, "summary": counts, "exit_code": code, "audit": audit,
            "method": {"confidence": 0.90, "bootstrap_resamples": 2000,
                       "rng_seed": 20250101, "interval": "percentile"}}



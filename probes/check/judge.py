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
from .verdict import (VERDICTS, Estimate, Judgement, _num, allowed_interval, judge_ab, judge_per_step,
                      judge_trajectory, judgement_dict, method_info, severity, skill)


class RunData:
    """Rows of the run directories, and predictor outputs computed after the fact from stats/ when needed."""

    def __init__(self, hyp: Hypothesis, out: Path, record: dict):
        self.hyp, self.out, self.record = hyp, out, record
        self.n = int(record["steps"])
        self._rows: dict[Path, list[dict]] = {}
        self._posthoc: dict[tuple, dict[int, dict]] = {}

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
        params = dict(p.predictor_params)  # the recorder ran every predictor at its defaults: set ones are post hoc
        if not params and any(key in r for r in rows):
            return by_step(rows, key, self.n)
        _, name, out = key.split("/", 2)
        reg = hyp_mod.predictor_registry()
        stats_dir = d / "stats"
        if reg is None or name not in reg or not stats_dir.is_dir():
            why = f"with parameters {params}" if params else "is not in the rows and"
            raise LookupError(f"{key} {why} needs the stats/ of {d} to compute it from, and there are none")
        cache_key = (d, name, tuple(sorted(params.items())))
        if cache_key not in self._posthoc:
            import torch

            fn, vals = reg.get(name), {}
            for f in sorted(stats_dir.glob("step_*.pt")):
                try:
                    stats = torch.load(f, map_location="cpu", weights_only=True)
                except Exception as e:  # noqa: BLE001 - pickle payloads and damaged files: one line, exit 2
                    raise HypothesisError(str(f), "", f"refused: not a stats file this toolkit wrote (it needs "
                                                      f"pickle or is damaged: {type(e).__name__})") from None
                vals[int(f.stem.split("_")[1])] = {k: float(v) for k, v in fn(stats, **params).items()}
            self._posthoc[cache_key] = vals
        vals = self._posthoc[cache_key]
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


def _stack(data: RunData, dirs: list[Path], fn) -> np.ndarray:
    return np.stack([fn(x) for x in dirs])


def _judge_per_step(p: Prediction, data: RunData, seeds: list[int], sl: slice) -> tuple[Judgement, dict, dict]:
    d = _dirs(data, p.arm, seeds)
    pr = _stack(data, d, lambda x: data.predicted(x, p, p.pred_key))[:, sl]
    ob = _stack(data, d, lambda x: data.metric(x, p.metric))[:, sl]
    plot = {"type": "scatter", "predicted": pr.ravel().tolist(), "observed": ob.ravel().tolist(),
            "xlabel": p.pred_key, "ylabel": p.metric}
    j = judge_per_step(pr, ob, min_r=p.min_r, slope=p.slope, min_sign_agreement=p.min_sign_agreement,
                       max_median_rel_error=p.max_median_rel_error, method=p.resample)
    return j, plot, {"skill_pairs": (pr, ob)}


def _judge_trajectory(p: Prediction, data: RunData, seeds: list[int], sl: slice) -> tuple[Judgement, dict, dict]:
    d = _dirs(data, p.arm, seeds)
    pr = _stack(data, d, lambda x: data.predicted(x, p, p.pred_key))
    ob = _stack(data, d, lambda x: data.metric(x, p.observed))
    # the predicted trajectory: the window's first observed value plus the accumulated one-step predictions
    acc = ob[:, sl.start:sl.start + 1] + np.concatenate(
        [np.zeros((len(seeds), 1)), np.nancumsum(pr[:, sl], 1)[:, :-1]], 1)
    plot = {"type": "trajectory", "metric": p.observed, "start": sl.start, "predicted": acc.tolist(),
            "observed": ob.tolist(), "arm": p.arm, "pred_key": p.pred_key}
    # per step, the prediction at step t is of o[t+1] - o[t]
    delta = np.concatenate([np.diff(ob, axis=1), np.full((len(seeds), 1), np.nan)], 1)
    j = judge_trajectory(pr[:, sl], ob[:, sl], allowed=p.ratio, method=p.resample)
    return j, plot, {"skill_pairs": (pr[:, sl], delta[:, sl])}


def _judge_pair(p: Prediction, data: RunData, seeds: list[int], sl: slice,
                notes: list[str]) -> tuple[Judgement, dict, dict]:
    """ab and counterfactual: treatment vs baseline, paired by seed and step. Returns (judgement, plot, info)."""
    b_arm, t_arm = p.arms
    d_b = _dirs(data, b_arm, seeds)      # the baseline runs: the predictor's values come from their rows
    d_t = _dirs(data, t_arm, seeds) if p.kind == "ab" else [x / p.shadow_dir for x in d_b]
    d_bm = d_b if p.kind == "ab" or p.baseline_dir is None else [x / p.baseline_dir for x in d_b]
    missing = [str(x.relative_to(data.out)) for x in d_t + d_bm if not (x / "metrics.jsonl").exists()]
    if missing:
        raise LookupError(f"no rows in {', '.join(missing)} (these runs were made without this pair; "
                          "rerun without --from-run)")
    b = _stack(data, d_bm, lambda x: data.metric(x, p.metric))
    t = _stack(data, d_t, lambda x: data.metric(x, p.metric))
    info: dict[str, Any] = {}
    if p.kind == "counterfactual":
        match = _stack(data, d_t, lambda x: data.metric(x, "counterfactual/batch_match"))
        if d_bm is not d_b:  # both sides are shadows: both must have sampled the baseline's batch
            match = np.where(_stack(data, d_bm, lambda x: data.metric(x, "counterfactual/batch_match")) == 1.0,
                             match, 0.0)
        if (match == 0.0).any():
            notes.append(f"{int((match == 0.0).sum())} step(s) whose batches differed between the two updates "
                         "were left out")
        b, t = np.where(match == 1.0, b, np.nan), np.where(match == 1.0, t, np.nan)
        info["pairs"] = int((match[:, sl] == 1.0).sum())
    pr = p.predicted
    pv = None
    if pr.predictor:
        pv = _stack(data, d_b, lambda x: data.predicted(x, p, p.pred_key))[:, sl]
        if not np.isfinite(pv).any():
            raise LookupError(f"{p.pred_key} has no finite value in the window")
    bw, tw = b[:, sl], t[:, sl]
    if pr.compare == "per_step":  # treatment - baseline step by step against the predictor of that difference
        obs = tw - bw
        plot = {"type": "scatter", "predicted": pv.ravel().tolist(), "observed": obs.ravel().tolist(),
                "xlabel": p.pred_key, "ylabel": f"{p.metric}: {t_arm} − {b_arm}"}
        j = judge_per_step(pv, obs, min_r=p.min_r, slope=p.slope, min_sign_agreement=p.min_sign_agreement,
                           max_median_rel_error=p.max_median_rel_error, method=p.resample)
        info["skill_pairs"] = (pv, obs)
        return j, plot, info
    stat = info["stat"] = p.stat if p.kind == "ab" else "mean"
    info["resample"] = p.resample
    allowed = allowed_interval(pr.compare, pr.direction, pr.value, pr.tolerance) if pv is None else (math.nan, math.nan)
    j = judge_ab(bw, tw, compare=pr.compare, allowed=allowed, stat=stat, resample=p.resample,
                 predicted=pv, tolerance=pr.tolerance)
    pval = j.extra.get("predictor_value")
    if pv is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            info["skill_pairs"] = (pv, tw / bw if pr.compare == "ratio" else tw - bw)
    if p.kind == "ab":
        plot = {"type": "ab", "metric": p.metric, "arms": [b_arm, t_arm], "baseline": b.tolist(),
                "treatment": t.tolist(), "window": [sl.start, sl.stop]}
    else:
        plot = {"type": "cf", "metric": p.metric, "arms": [b_arm, t_arm],
                "baseline": bw.ravel().tolist(), "treatment": tw.ravel().tolist(),
                "compare": pr.compare, "value": pval if pval is not None else pr.value}
    return j, plot, info


def _judge_core(p: Prediction, data: RunData, seeds: list[int], sl: slice,
                notes: list[str]) -> tuple[Judgement, dict, dict]:
    if not seeds:
        raise LookupError("no usable run for this prediction")
    if p.kind == "per_step":
        return _judge_per_step(p, data, seeds, sl)
    if p.kind == "trajectory":
        return _judge_trajectory(p, data, seeds, sl)
    return _judge_pair(p, data, seeds, sl, notes)


def _rival_values(p: Prediction, data: RunData, seeds: list[int], sl: slice) -> list[tuple[str, float]]:
    """Each rival's predicted value: its number, or its predictor's mean over the baseline's seeds and window."""
    out = []
    for r in p.rivals:
        if r.value is not None:
            out.append((r.label, r.value))
            continue
        try:
            v = _stack(data, _dirs(data, p.arms[0], seeds), lambda x, k=r.pred_key: data.predicted(x, p, k))[:, sl]
        except LookupError:  # not in the rows and no stats/ to compute it from: no value, so not refuted
            v = np.full(1, np.nan)
        out.append((r.label, float(np.nanmean(v)) if np.isfinite(v).any() else math.nan))
    return out


def _severity(p: Prediction, j: Judgement, data: RunData, seeds: list[int], sl: slice,
              sk: Optional[Estimate]) -> dict[str, Any]:
    """severe / severity_reason for a prediction with a tolerance (verdict.severity); None for the rest."""
    pr = p.predicted
    if pr is None or pr.compare not in ("ratio", "difference") or not j.criteria:
        return {"severe": None, "severity_reason": "no tolerance: severity applies to ratio / difference predictions"}
    rivals = _rival_values(p, data, seeds, sl)
    severe, why = severity(j.verdict, j.criteria[0].estimate, pr.compare, pr.tolerance, rivals, sk,
                           constant=pr.predictor is None)
    return {"severe": severe, "severity_reason": why,
            "rivals": [{"label": lab, "value": _num(v)} for lab, v in rivals]}


def _cold_starts(data: RunData, p: Prediction, seeds: list[int]) -> dict[int, list[int]]:
    """cold start (sft.seed) -> the usable seeds that started from it (records without it: one group)."""
    runs = data.runs(p.arms[0])
    groups: dict[int, list[int]] = {}
    for s in seeds:
        cs = runs[s].get("cold_start")
        if cs is None:
            return {}
        groups.setdefault(int(cs), []).append(s)
    return groups


def _by_cold_start(p: Prediction, data: RunData, seeds: list[int], sl: slice) -> list[dict]:
    groups = _cold_starts(data, p, seeds)
    if len(groups) < 2:
        return []
    out = []
    for cs, ss in sorted(groups.items()):
        try:
            j, _, _ = _judge_core(p, data, ss, sl, [])
            c = j.criteria[0] if j.criteria else None
            out.append({"cold_start": cs, "seeds": ss, "verdict": j.verdict, "observed": _obs_text(j),
                        "value": c.to_dict()["value"] if c else None,
                        "interval": c.to_dict()["interval"] if c else None})
        except LookupError as e:
            out.append({"cold_start": cs, "seeds": ss, "verdict": "inconclusive", "observed": str(e).strip("'\"")})
    return out


def judge_prediction(p: Prediction, data: RunData) -> tuple[dict[str, Any], Optional[dict]]:
    """Judge one prediction on the run data; returns (its report entry, its plot data or None). Pure:
    reads the runs, writes nothing."""
    notes: list[str] = []
    sl = window_slice(p, data.n)
    entry: dict[str, Any] = {"index": p.index, "label": p.label, "kind": p.kind, "metric": p.metric,
                             "arms": list(p.arms_used()), "window": [sl.start, sl.stop], "note": p.note}
    if p.kind == "counterfactual":
        entry["shadow_optimizer"] = p.shadow_optimizer
    seeds = entry["seeds"] = _usable_seeds(data, p.arms_used() if p.kind != "counterfactual" else p.arms[:1], notes)
    try:
        j, plot, info = _judge_core(p, data, seeds, sl, notes)
    except LookupError as e:  # the data a prediction needs are not there: it cannot be judged
        entry.update(verdict="inconclusive", criteria=[], notes=notes + [str(e).strip("'\"")],
                     predicted=_pred_text(p, None), observed="n/a", severe=None,
                     severity_reason="not judged")
        return entry, None
    jd = judgement_dict(j)
    jd["notes"] = notes + jd["notes"]
    entry.update({k: v for k, v in info.items() if k != "skill_pairs"})
    entry.update(jd, predicted=_pred_text(p, jd.get("predictor_value")), observed=_obs_text(j))
    sk = None
    if "skill_pairs" in info:
        sk, _ = skill(*info["skill_pairs"], method=p.resample)  # its notes repeat the judgement's
        entry["skill"] = {"value": _num(sk.value), "interval": [_num(sk.lo), _num(sk.hi)],
                          "says_nothing_beyond_average": not (math.isfinite(sk.lo) and sk.lo > 0)}
        if entry["skill"]["says_nothing_beyond_average"]:
            entry["notes"].append(f"per-step skill {_fmt(sk.value)} [{_fmt(sk.lo)}, {_fmt(sk.hi)}]: the interval "
                                  "does not lie above 0, so the predictor says nothing beyond its average")
    entry.update(_severity(p, j, data, seeds, sl, sk))
    by_cs = _by_cold_start(p, data, seeds, sl)
    pre = sorted({str(r.get("pretrained")) for a in p.arms for r in data.runs(a).values() if r.get("pretrained")})
    if pre:
        entry["start"] = (f"pretrained weights ({', '.join(pre)}): no cold start to vary, its seeds vary the RL run "
                          "only, so this verdict is not checked across starting points")
    if by_cs:
        entry["by_cold_start"] = by_cs
        entry["unstable"] = len({x["verdict"] for x in by_cs}) > 1
    return entry, plot


def _pred_text(p: Prediction, pval: Optional[float]) -> str:
    per_pair = p.predicted is not None and p.predicted.compare == "per_step"
    if p.kind == "per_step" or per_pair:
        parts = []
        if p.min_r is not None:
            parts.append(f"r ≥ {p.min_r:g}")
        if p.slope is not None:
            parts.append(f"slope ∈ [{p.slope[0]:g}, {p.slope[1]:g}]")
        if p.min_sign_agreement is not None:
            parts.append(f"sign agree ≥ {p.min_sign_agreement:g}")
        if p.max_median_rel_error is not None:
            parts.append(f"med rel err ≤ {p.max_median_rel_error:g}")
        return ("T − B per step vs " if per_pair else "") + f"{p.pred_key}: " + ", ".join(parts)
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
    judged = [judge_prediction(p, data) for p in hyp.predictions]
    preds = [e for e, _ in judged]
    counts = {v: sum(e["verdict"] == v for e in preds) for v in VERDICTS}
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
            "runs": runs, "failed_runs": [r["dir"] for r in failed], "cold_start": record.get("cold_start", "shared"),
            "predictions": preds, "summary": counts, "exit_code": code, "audit": audit,
            "method": method_info(),
            "plot_data": {e["index"]: pd for e, pd in judged if pd}}



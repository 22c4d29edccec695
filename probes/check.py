"""probe-check: run a hypothesis's arms and seeds on the trainer with probes, then judge its predictions.

    probe-check HYPOTHESIS.toml [--out DIR] [--seeds 0 1 2] [--steps N] [--quick] [--quiet]
    probe-check --from-run DIR [HYPOTHESIS.toml] [--out DIR2]      # re-judge, no training
    probe-check HYPOTHESIS.toml --from-log ARM=FILE ...           # judge TRL / verl logs (probes/logs.py)

Each (arm, seed) is one ordinary run directory, `<out>/runs/<arm>/seed<s>/` (config.json,
metrics.jsonl, stats/), with the probes' recorder attached. All seeds of all arms share the cached
cold start, and seed s of every arm sees the same prompts at every step (prompts are drawn from
(run.seed, step)), which is what makes the A/B bootstrap paired.

A counterfactual pair (baseline arm B, treatment arm T) runs inside B's runs: before each of B's
steps, a shadow trainer with T's config is given B's weights and optimizer state and takes that
step; sampling is seeded by (run.seed, step) and happens before grading, so both updates start from
the same weights with the same batch (checked: a fingerprint of the sampled tokens must match; the
shadow's rows go to `<out>/runs/<B>/seed<s>/cf-<T>/metrics.jsonl`). B's own trajectory is untouched.

Then every prediction is judged (probes/verdict.py) and reported (probes/report.py): a table on the
terminal, report.json, report.md, plots/*.png. Exit code: 0 every prediction confirmed, 1 any refuted
or inconclusive (or a run failed), 2 invalid input (one line on stderr, never a traceback).

Left out on purpose: running arms in parallel processes (the machine's cores already serve torch's
intra-op threads), and reusing finished runs of an earlier invocation (use --from-run for that).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import hypothesis as hyp_mod
from .counterfactual import fingerprint
from .hypothesis import Hypothesis, HypothesisError, Plan, Prediction, window_slice
from .verdict import (Judgement, allowed_interval, judge_ab, judge_per_step, judge_trajectory,
                      judgement_dict)

PROG = "probe-check"
USABLE = ("finished", "collapsed")


# ----------------------------------------------------------------------------------------------
# Running


class MetricMissing(HypothesisError):
    pass


def _attach_probes(trainer) -> bool:
    """Attach the probes' recorder (imported lazily); False when it is not installed."""
    import importlib

    try:
        recorder = importlib.import_module("solidrl.probes.recorder")
    except ModuleNotFoundError as e:
        if e.name == "solidrl.probes.recorder":
            return False
        raise
    recorder.attach(trainer)
    from . import offpolicy

    offpolicy.attach(trainer)  # rollout_ratio/*, correction/*, token lags; after the recorder (reuses kl/step)
    return True


def _metric_check(hyp: Hypothesis, arm: str):
    """A step_end hook for step 0 of an arm's first run: every metric the predictions read must be there."""
    needed = hyp_mod.metrics_needed(hyp).get(arm, [])

    def hook(ctx):
        if ctx.step != 0:
            return
        row = ctx.metrics
        for key, fld in needed:
            if key not in row and not key.startswith("time/"):
                known = sorted(k for k in row if not k.startswith("pred/"))
                raise MetricMissing(hyp.file, fld, f"unknown metric {key!r} (not in the rows of arm {arm!r}); "
                                                   f"known: {', '.join(known)}")
        for p in hyp.predictions:
            key = p.pred_key
            if key is None or p.arms[0] != arm:
                continue
            name = key.split("/")[1]
            head = f"pred/{name}/"
            outs = sorted(k[len(head):] for k in row if k.startswith(head))
            if outs and key not in row:  # the recorder ran this predictor: its outputs are known
                raise MetricMissing(hyp.file, p.output_field,
                                    f"predictor {name!r} has no output {key[len(head):]!r}; "
                                    f"its outputs: {', '.join(outs)}")
    return hook


class Shadow:
    """The counterfactual treatment step taken from the baseline trainer's weights, optimizer state and batch."""

    def __init__(self, base, cfg_t, out_dir: Path, every: int):
        from solidrl.trainer.loop import Trainer

        self.base, self.every = base, every
        self.t = Trainer(cfg_t, out_dir, progress=False)
        _attach_probes(self.t)
        self.rows = open(out_dir / "metrics.jsonl", "a")
        self.fp: dict[int, str] = {}
        self.row: Optional[dict] = None
        self.matches = self.total = 0
        self.t.add_hook("step_end", lambda ctx: self.fp.__setitem__(ctx.step, fingerprint(ctx.rollout)))

    def _sync(self) -> None:
        """Give the shadow the baseline's weights and optimizer moments (its own hyperparameters stay)."""
        b, t = self.base, self.t
        t.model.load_state_dict(b.model.state_dict())
        if type(t.optimizer) is type(b.optimizer):
            st = copy.deepcopy(b.optimizer.state_dict())
            st["param_groups"] = [dict(g, params=bg["params"]) for g, bg in
                                  zip(t.optimizer.state_dict()["param_groups"], st["param_groups"])]
            t.optimizer.load_state_dict(st)
        t.version = b.version
        if t.engine.separate:
            t.engine.load_state_dict(copy.deepcopy(b.engine.state_dict()))

    def step(self, k: int) -> None:
        self.row = None
        if k >= self.base.cfg.run.steps or k % self.every:
            return
        self._sync()
        self.row = self.t.train_step(k)

    def on_base_step_end(self, ctx) -> None:
        k = ctx.step
        if self.row is not None:
            match = self.fp.pop(k, None) == fingerprint(ctx.rollout)
            self.matches += match
            self.total += 1
            self.row["counterfactual/batch_match"] = float(match)
            self.rows.write(json.dumps(self.row) + "\n")
            self.rows.flush()
        self.step(k + 1)

    def close(self, status: str) -> None:
        self.rows.close()
        (self.t.out / "status.json").write_text(json.dumps(
            {"status": status, "steps": self.total, "batch_matches": self.matches}, indent=2))


def _run_one(hyp: Hypothesis, arm: str, seed: int, plan: Plan, out: Path, run_dir: Path,
             progress: bool, first_of_arm: bool) -> dict[str, Any]:
    from solidrl.trainer.loop import Trainer

    rec: dict[str, Any] = {"arm": arm, "seed": seed, "dir": str(run_dir.relative_to(out)),
                           "status": "failed", "reason": None, "counterfactual": []}
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = hyp_mod.arm_config(hyp, arm, plan, seed)
    t0 = time.perf_counter()
    shadows: list[tuple[str, Shadow]] = []
    try:
        trainer = Trainer(cfg, run_dir, progress=progress)
        rec["probes"] = _attach_probes(trainer)
        if first_of_arm:
            trainer.add_hook("step_end", _metric_check(hyp, arm))
        for a, b in hyp.counterfactual_pairs():
            if a != arm:
                continue
            d = run_dir / f"cf-{b}"
            sh = Shadow(trainer, hyp_mod.arm_config(hyp, b, plan, seed), d, plan.counterfactual_every)
            trainer.add_hook("step_end", sh.on_base_step_end)
            shadows.append((b, sh))
        for _, sh in shadows:
            sh.step(0)
        status = trainer.run()
        rec["status"], rec["reason"] = status["status"], status.get("reason")
    except MetricMissing:  # a mistake in the file, found on the first step: stop everything (exit 2)
        raise
    except Exception as e:  # a run that fails mid-way: keep its directory, say which and why
        rec["reason"] = f"{type(e).__name__}: {e}".splitlines()[0]
        if run_dir.exists():
            (run_dir / "status.json").write_text(json.dumps({"status": "failed", "reason": rec["reason"]}, indent=2))
    finally:
        for b, sh in shadows:
            sh.close(rec["status"])
            rec["counterfactual"].append({"treatment": b, "dir": str(sh.t.out.relative_to(out)),
                                          "steps": sh.total, "batch_matches": sh.matches})
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    return rec


def run_all(hyp: Hypothesis, plan: Plan, out: Path, progress: bool = True, mode: str = "default") -> dict:
    """Run every (arm, seed) the predictions need; returns the record written to out/plan.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "hypothesis.toml").write_text(hyp.text)
    arms = hyp.arms_to_run()
    jobs = [(a, s) for a in arms for s in plan.seeds]
    record = {"hypothesis": hyp.name, "file": hyp.file, "mode": mode, "steps": plan.steps,
              "seeds": list(plan.seeds), "overrides": {k: v for k, v in plan.overrides},
              "counterfactual_every": plan.counterfactual_every, "runs": []}
    for i, (arm, seed) in enumerate(jobs):
        run_dir = out / "runs" / arm / f"seed{seed}"
        if progress:
            print(f"[{i + 1}/{len(jobs)}] {hyp.name}: arm {arm!r} seed {seed}, {plan.steps} steps -> {run_dir}",
                  file=sys.stderr, flush=True)
        rec = _run_one(hyp, arm, seed, plan, out, run_dir, progress, first_of_arm=(seed == plan.seeds[0]))
        record["runs"].append(rec)
        (out / "plan.json").write_text(json.dumps(record, indent=2))
        if rec["status"] not in USABLE and progress:
            print(f"{PROG}: run {arm}/seed{seed} failed: {rec['reason']} (kept in {run_dir})", file=sys.stderr)
    return record


# ----------------------------------------------------------------------------------------------
# Reading runs


def read_rows(run_dir: Path) -> list[dict]:
    p = run_dir / "metrics.jsonl"
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


def series(rows: list[dict], key: str, n: int) -> np.ndarray:
    """[n] values of `key` by step (NaN where the row or the key is absent or not a number)."""
    x = np.full(n, np.nan)
    for r in rows:
        s = r.get("step")
        v = r.get(key)
        if isinstance(s, int) and 0 <= s < n and isinstance(v, (int, float)) and not isinstance(v, bool):
            x[s] = float(v)
    return x


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
        return series(self.rows(d), key, self.n)

    def predicted(self, d: Path, p: Prediction, key: str) -> np.ndarray:
        """The predictor's per-step output: from the rows, else computed from run_dir/stats/."""
        rows = self.rows(d)
        if any(key in r for r in rows):
            return series(rows, key, self.n)
        _, name, out = key.split("/", 2)
        reg = hyp_mod.predictor_registry()
        stats_dir = d / "stats"
        if reg is None or name not in reg or not stats_dir.is_dir():
            raise LookupError(f"{key} is not in the rows of {d} and there are no stats/ to compute it from")
        if (d, name) not in self._posthoc:
            import torch

            fn, vals = reg.get(name), {}
            for f in sorted(stats_dir.glob("step_*.pt")):
                stats = torch.load(f, map_location="cpu", weights_only=True)
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


# ----------------------------------------------------------------------------------------------
# Judging


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
    from .audit import audit_arm

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


# ----------------------------------------------------------------------------------------------
# --from-run


def _check_runs_match(hyp: Hypothesis, record: dict, out: Path) -> None:
    """Refuse to re-judge runs made with other arm settings than the hypothesis now states."""
    plan = Plan(steps=record["steps"], seeds=tuple(record["seeds"]),
                overrides=tuple(record.get("overrides", {}).items()))
    for r in record["runs"]:
        if r["arm"] not in hyp.arm_names:
            raise HypothesisError(hyp.file, "", f"--from-run: run {r['dir']} is of arm {r['arm']!r}, "
                                                f"which the hypothesis does not define")
        cfg_file = out / r["dir"] / "config.json"
        if not cfg_file.exists():
            continue
        want = hyp_mod.arm_config(hyp, r["arm"], plan, r["seed"]).to_dict()
        have = json.loads(cfg_file.read_text())
        for sec, fields in want.items():
            for k, v in fields.items():
                hv = have.get(sec, {}).get(k)
                if (list(v) if isinstance(v, tuple) else v) != hv:
                    raise HypothesisError(hyp.file, f"{r['arm']}.{sec}.{k}",
                                          f"--from-run: {cfg_file} has {hv!r}, the hypothesis gives {v!r}; "
                                          "rerun without --from-run")
    missing = [a for a in hyp.arms_to_run() if not any(r["arm"] == a for r in record["runs"])]
    if missing:
        raise HypothesisError(hyp.file, "", f"--from-run: no runs of arm(s) {', '.join(missing)} in {out}")


def load_record(run_dir: Path) -> dict:
    p = run_dir / "plan.json"
    if not p.exists():
        raise HypothesisError(str(run_dir), "--from-run", "no plan.json here; give a directory written by probe-check")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise HypothesisError(str(p), "", f"not valid JSON ({e})") from None


# ----------------------------------------------------------------------------------------------
# Command line


def _seeds(items: list[str]) -> tuple[int, ...]:
    out = []
    for it in items:
        for part in it.split(","):
            if part.strip():
                try:
                    out.append(int(part))
                except ValueError:
                    raise HypothesisError("--seeds", "", f"expected integers, got {part!r}") from None
    return tuple(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                 epilog="Exit code: 0 all confirmed, 1 any refuted/inconclusive, 2 invalid input.")
    ap.add_argument("hypothesis", nargs="?", help="hypothesis TOML file (see docs/probe-check.md)")
    ap.add_argument("--out", help="output directory (default runs/probe-check/<name>[-quick])")
    ap.add_argument("--seeds", nargs="+", metavar="S", help="seeds to run, e.g. --seeds 0 1 2 or 0,1,2")
    ap.add_argument("--steps", type=int, help="steps per run (overrides the file)")
    ap.add_argument("--quick", action="store_true", help="use the file's [run.quick] reductions")
    ap.add_argument("--from-run", metavar="DIR", help="re-judge an earlier probe-check directory without training")
    ap.add_argument("--from-log", nargs="+", metavar="[ARM[@SEED]=]FILE",
                    help="judge logs of runs made elsewhere (TRL trainer_state.json, verl JSONL): probes/logs.py")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads per run (default 1; 0 = torch's default) unless the file sets run.threads")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return ap


def run_check(args) -> int:
    from . import report

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    if args.from_log:
        from .logs import run_from_log

        return run_from_log(args)
    if args.from_run:
        src = Path(args.from_run)
        record = load_record(src)
        hfile = Path(args.hypothesis) if args.hypothesis else src / "hypothesis.toml"
        hyp = hyp_mod.load(hfile)
        if args.seeds or args.steps or args.quick:
            raise HypothesisError(str(hfile), "--from-run", "takes the runs as they are; "
                                  "--seeds, --steps and --quick apply to new runs only")
        _check_runs_match(hyp, record, src)
        out = Path(args.out) if args.out else src
    else:
        if not args.hypothesis:
            raise HypothesisError("<command line>", "", "give a hypothesis file, or --from-run DIR")
        hyp = hyp_mod.load(args.hypothesis)
        plan = hyp_mod.resolve_plan(hyp, quick=args.quick, steps=args.steps,
                                    seeds=_seeds(args.seeds) if args.seeds else None, threads=args.threads)
        out = Path(args.out) if args.out else Path("runs") / "probe-check" / (hyp.name + ("-quick" if args.quick else ""))
        t0 = time.perf_counter()
        record = run_all(hyp, plan, out, progress=not args.quiet, mode="quick" if args.quick else "default")
        record["wall_s"] = round(time.perf_counter() - t0, 1)
        (out / "plan.json").write_text(json.dumps(record, indent=2))
        src = out
    result = judge_all(hyp, src, record)
    result["wall_s"] = record.get("wall_s")
    out.mkdir(parents=True, exist_ok=True)
    report.write(result, out, plots=not args.no_plots)
    report.print_table(result)
    if not args.quiet:
        print(f"report: {out / 'report.md'}", file=sys.stderr)
    return result["exit_code"]


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_check(args)
    except HypothesisError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the run directories written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""probe-check's runs: every (arm, seed) of a hypothesis on the trainer with probes, and the record.

Each (arm, seed) is one ordinary run directory, `<out>/runs/<arm>/seed<s>/` (config.json,
metrics.jsonl, stats/), with the probes attached. All seeds of all arms share the cached cold
start, and seed s of every arm sees the same prompts at every step (prompts are drawn from
(run.seed, step)), which is what makes the A/B bootstrap paired.

A counterfactual pair (baseline arm B, treatment arm T) runs inside B's runs: before each of B's
steps, a shadow trainer with T's config is given B's weights and optimizer state and takes that
step; sampling is seeded by (run.seed, step) and happens before grading, so both updates start from
the same weights with the same batch (checked: a fingerprint of the sampled tokens must match; the
shadow's rows go to `<out>/runs/<B>/seed<s>/cf-<T>/metrics.jsonl`). B's own trajectory is untouched.

The record (out/plan.json) lists every run with its status; `load_record` and `check_runs_match`
serve `probe-check --from-run`. Data flow: docs/architecture.md.

Left out on purpose: running arms in parallel processes (the machine's cores already serve torch's
intra-op threads), and reusing finished runs of an earlier invocation (use --from-run for that).
"""
from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from solidrl.probes import offpolicy, recorder
from solidrl.probes.counterfactual import fingerprint
from solidrl.trainer.io import append_line, atomic_write_json, atomic_write_text
from solidrl.trainer.loop import Trainer

from . import hypothesis as hyp_mod
from .hypothesis import Hypothesis, HypothesisError, Plan

PROG = "probe-check"
USABLE = ("finished", "collapsed")

class MetricMissing(HypothesisError):
    pass


def _attach_probes(trainer) -> bool:
    """Attach the recorder and the off-policy probe (after the recorder: it reuses kl/step)."""
    recorder.attach(trainer)
    offpolicy.attach(trainer)  # rollout_ratio/*, correction/*, token lags
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
            append_line(self.rows, json.dumps(self.row))
        self.step(k + 1)

    def close(self, status: str) -> None:
        self.rows.close()
        atomic_write_json(self.t.out / "status.json",
                          {"status": status, "steps": self.total, "batch_matches": self.matches})


def _run_one(hyp: Hypothesis, arm: str, seed: int, plan: Plan, out: Path, run_dir: Path,
             progress: bool, first_of_arm: bool) -> dict[str, Any]:
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
            atomic_write_json(run_dir / "status.json", {"status": "failed", "reason": rec["reason"]})
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
    atomic_write_text(out / "hypothesis.toml", hyp.text)
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
        atomic_write_json(out / "plan.json", record)
        if rec["status"] not in USABLE and progress:
            print(f"{PROG}: run {arm}/seed{seed} failed: {rec['reason']} (kept in {run_dir})", file=sys.stderr)
    return record



def check_runs_match(hyp: Hypothesis, record: dict, out: Path) -> None:
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



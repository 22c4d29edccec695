"""probe-check's runs: every (arm, seed) of a hypothesis on the trainer with probes, and the record.

Each (arm, seed) is one ordinary run directory, `<out>/runs/<arm>/seed<s>/` (config.json,
metrics.jsonl, stats/), with the probes attached. Seed s of every arm starts from the same cached
cold start (sft.seed + s by default, [run] cold_start = "per_seed"; one for all seeds with "shared")
and sees the same prompts at every step (prompts are drawn from (run.seed, step)), which is what
makes the A/B comparison paired.

A counterfactual pair (baseline arm B, treatment arm T) runs inside B's runs: before each of B's
steps, a shadow trainer with T's config takes T's counterfactual step from B's weights and optimizer
state (Trainer.counterfactual_step); sampling is seeded by (run.seed, step) and happens before grading, so both updates start from
the same weights with the same batch (checked: a fingerprint of the sampled tokens must match; the
shadow's rows go to `<out>/runs/<B>/seed<s>/cf-<T>/metrics.jsonl`). B's own trajectory is untouched.

The record (out/plan.json) lists every run with its status; `load_record` and `check_runs_match`
serve `probe-check --from-run`. Data flow: docs/architecture.md.

Left out on purpose: running arms in parallel processes (the machine's cores already serve torch's
intra-op threads), and reusing finished runs of an earlier invocation (use --from-run for that).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from solidrl.probes.counterfactual import fingerprint
from solidrl.probes.probeset import attach_probes
from solidrl.trainer.io import append_line, atomic_write_json, atomic_write_text
from solidrl.trainer.loop import StepFrom, Trainer

from . import hypothesis as hyp_mod
from .hypothesis import Hypothesis, HypothesisError, Plan

PROG = "probe-check"
USABLE = ("finished", "collapsed")

class MetricMissing(HypothesisError):
    pass


def _attach_probes(trainer) -> list[str]:
    """The probe set `solidrl train` attaches (probes/probeset.py, by probes.groups); returns its probes' names."""
    return attach_probes(trainer).names()


def _metric_check(hyp: Hypothesis, arm: str):
    """A step_end hook for step 0 of an arm's first run: every metric the predictions read must be there.

    The second line of defence: the parser already refused names docs/metrics.md does not define
    (probes/glossary.py); this catches a defined metric the arm's probe set does not write (a group
    left out of probes.groups, a term that is off). The run it stops is recorded as failed, with why.
    """
    needed = hyp_mod.metrics_needed(hyp).get(arm, [])

    def stop(ctx, fld: str, msg: str):
        err = MetricMissing(hyp.file, fld, msg)
        ctx.trainer.status = {"status": "failed", "step": ctx.step, "reason": str(err)}  # Trainer.run writes it
        raise err

    def hook(ctx):
        if ctx.step != 0:
            return
        row = ctx.metrics
        for key, fld in needed:
            if key not in row and not key.startswith("time/"):
                known = sorted(k for k in row if not k.startswith("pred/"))
                stop(ctx, fld, f"metric {key!r} is not in the rows of arm {arm!r} (its probes.groups do not "
                               f"write it); known: {', '.join(known)}")
        for p in hyp.predictions:
            key = p.pred_key
            if key is None or p.arms[0] != arm:
                continue
            name = key.split("/")[1]
            head = f"pred/{name}/"
            outs = sorted(k[len(head):] for k in row if k.startswith(head))
            if outs and key not in row:  # the recorder ran this predictor: its outputs are known
                stop(ctx, p.output_field, f"predictor {name!r} has no output {key[len(head):]!r}; "
                                          f"its outputs: {', '.join(outs)}")
    return hook


class Shadow:
    """A shadow arm: before each of the baseline's steps, the treatment's counterfactual step from there.

    Each step is `Trainer.counterfactual_step` on a trainer of the treatment's config (its own probes
    attached) from a `StepFrom` copy of the baseline trainer: its weights, optimizer moments and version.
    The baseline calls `on_base_step_end` as an unclocked hook, so the shadow's time stays out of the
    baseline's time/*; the shadow's own rows carry theirs.
    """

    def __init__(self, base, cfg_t, out_dir: Path, every: int, fresh_optimizer: bool = False):
        self.base, self.every, self.fresh = base, every, fresh_optimizer
        self.t = Trainer(cfg_t, out_dir, progress=False)
        _attach_probes(self.t)
        self.rows = open(out_dir / "metrics.jsonl", "a")
        self.fp: Optional[str] = None
        self.row: Optional[dict] = None
        self.matches = self.total = 0

    def attach(self) -> "Shadow":
        """Take the shadow's first step now and one after each of the baseline's steps."""
        self.base.add_hook("step_end", self.on_base_step_end, clock=False)
        self.step(0)
        return self

    def step(self, k: int) -> None:
        self.row = None
        if k >= self.base.cfg.run.steps or k % self.every:
            return
        ctx = self.t.counterfactual_step(self.t.cfg, k, StepFrom.of(self.base, optimizer=not self.fresh))
        self.row, self.fp = ctx.metrics, fingerprint(ctx.rollout)

    def on_base_step_end(self, ctx) -> None:
        k = ctx.step
        if self.row is not None:
            match = self.fp == fingerprint(ctx.rollout)
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
    # the sft.seed this run started from: the report's per-cold-start verdicts. A model.path run has no cold
    # start (it starts from the given weights whatever sft.seed says): None, and its seeds vary the RL run only
    rec["cold_start"] = None if cfg.model.path else cfg.sft.seed
    rec["pretrained"] = cfg.model.path
    t0 = time.perf_counter()
    shadows: list[tuple[str, Shadow]] = []
    try:
        trainer = Trainer(cfg, run_dir, progress=progress)
        rec["probes"] = _attach_probes(trainer)
        if first_of_arm:
            trainer.add_hook("step_end", _metric_check(hyp, arm))
        for a, b, folder, fresh in hyp.shadows():
            if a != arm:
                continue
            d = run_dir / folder
            sh = Shadow(trainer, hyp_mod.arm_config(hyp, b, plan, seed), d, plan.counterfactual_every,
                        fresh_optimizer=fresh)
            shadows.append((b, sh))
        for _, sh in shadows:
            sh.attach()
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
                                          "steps": sh.total, "batch_matches": sh.matches,
                                          "shadow_optimizer": "fresh" if sh.fresh else "continue"})
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
              "counterfactual_every": plan.counterfactual_every, "cold_start": plan.cold_start, "runs": [],
              # re-judging (--from-run) reloads these after checking their hashes (trainer/plugins.py)
              "plugins": list(hyp.plugins), "plugin_base": str(Path(hyp.file).resolve().parent)}
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
                overrides=tuple(record.get("overrides", {}).items()),
                cold_start=record.get("cold_start", "shared"))  # records before per-seed cold starts shared one
    for r in record["runs"]:
        if r["arm"] not in hyp.arm_names:
            raise HypothesisError(hyp.file, "", f"--from-run: run {r['dir']} is of arm {r['arm']!r}, "
                                                f"which the hypothesis does not define")
        cfg_file = out / r["dir"] / "config.json"
        if not cfg_file.exists():
            continue
        want = hyp_mod.arm_config(hyp, r["arm"], plan, r["seed"]).to_dict()
        have = json.loads(cfg_file.read_text())
        for key in ("params", "plugins"):  # not sections: compared whole
            w, h = want.pop(key), have.get(key, {} if key == "params" else [])
            if key == "plugins":  # every plugin of the run, unchanged; more (say a new predictor) may be added
                w, h = sorted((x["path"], x["sha256"]) for x in w if x in h), sorted((x["path"], x["sha256"]) for x in h)
            if w != h:
                raise HypothesisError(hyp.file, f"{r['arm']}.{key}", f"--from-run: {cfg_file} has {key} {h!r}, "
                                      f"the hypothesis gives {w!r}; rerun without --from-run")
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



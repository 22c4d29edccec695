"""`solidrl ladder`: the perfect baseline, rungs of increasing breakage, then the broken rungs with each fix.

Every rung is one knob away from the baseline (presets in RUNGS); every fix is one registry entry
(FIXES). A fix runs on the rungs whose ratio it acts on: the corrections (TIS, two-sided TIS, IcePop,
masked sequence IS, Geo-RS, sequence TIS) reweigh by the rollout ratio pi_old / pi_rollout, which
staleness, partial rollouts and mismatch break; the ratio losses (PPO clip, GSPO's sequence-level
geometric-mean ratio, CISPO, SAPO, GMPO, DPPO-TV/KL, Clip-Cov, KL-Cov, PPO with OPSM) act on the
loss's ratio pi / pi_old, which only reuse (epochs, mini-batches) moves. Any other pairing is a no-op
by construction (the trainer recomputes pi_old, so pi / pi_old = 1 under staleness) and is skipped;
the exception is Clip-Cov, whose covariance cut also acts on policy (on every rung alike, so the
reuse rung, where its PPO clip acts too, is where it is compared).

Per rung x fix, averaged over seeds, the table gives:
  collapse        steps to collapse (status.json) per seed, or "none"
  final acc       mean reward/accuracy over the last 3 steps run
  kl/step         mean over steps (exact KL(pi_old || pi_new), the recorder's or offpolicy's)
  clip obs/pred   rollout_ratio/clip_frac: PPO's clip fraction on rho = pi_old / pi_rollout, and the
                  theory's clip_frac predictor (Gaussian log-ratio) on the same batch
  log-var obs     rollout_ratio/log_var = Var over loss tokens of log(pi_train / pi_rollout): the
                  "ratio variance", the quantity that grows with staleness
  log-var pred    [independent steps, aligned steps] from derive_ratio_decomposition: each step of lag
                  adds s^2 = 2 kl/step (probes/offpolicy.py)
  loss clip       the recorder's ratio/clip_frac (the loss's ratio pi / pi_old; moves only with reuse)
  touched         correction/touched_frac observed / predicted (the fix's registered predictor: tis,
                  icepop, tis_two_sided, seq_tis, masked_seq_is, geo_rs; the sequence-level ones model
                  independent tokens, N(L m, L s^2) per row of L loss tokens, counted from seq_index)
The spread columns average the steady state: steps >= staleness + partial_versions - 1, once every
token lags by the rung's full amount.

Outputs in --out: ladder.json (plan, per-run summaries, the table, wall time), ladder.md (the table),
plots/<family>.png (per step, one line per rung, predictions dashed), plots/fix_<rung>.png (per
fix), plots/summary.png (log-var observed vs predicted per rung), runs/<rung>/<fix>/seed<s>/ (each a
full run directory; one already finished with the same config is reused, not rerun).

Left out: learning-rate or batch-size rungs (not off-policy knobs), and fixes stacked on each other.
Size: ~520 lines: the plan, the runner, the table and the plots of one command, which read the same
RUNGS x FIXES registry; split, each part would import the others.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides, parse_set_args, validate

from solidrl.probes.rundir import by_step, read_rows

from .common import user_errors

__all__ = ["Rung", "Fix", "RUNGS", "FIXES", "LadderPlan", "build_plan", "run_ladder", "QUICK", "FULL"]


@dataclass(frozen=True)
class Rung:
    name: str
    family: str
    overrides: tuple[tuple[str, Any], ...] = ()
    """Dotted config overrides (the one knob this rung turns)."""

    @property
    def warm(self) -> int:
        """First step at which every token lags by the rung's full amount."""
        o = dict(self.overrides)
        return int(o.get("offpolicy.staleness", 0)) + int(o.get("offpolicy.partial_versions", 1)) - 1


@dataclass(frozen=True)
class Fix:
    name: str
    overrides: tuple[tuple[str, Any], ...]
    acts_on: tuple[str, ...]
    """Rung families whose ratio this fix changes."""
    predictor: Optional[str] = None
    """The registered predictor (theory.predictors) of its correction/touched_frac, written by the recorder as
    pred/<predictor>/correction/touched_frac; None for the losses."""


ROLLOUT_RATIO = ("staleness", "partial", "mismatch")
REUSE = ("reuse",)


def _rungs() -> dict[str, Rung]:
    out = [Rung("baseline", "baseline")]
    out += [Rung(f"staleness={k}", "staleness", (("offpolicy.staleness", k),)) for k in (1, 2, 4, 8)]
    out += [Rung(f"partial={m}", "partial", (("offpolicy.partial_versions", m),)) for m in (2, 3)]
    out += [Rung("bf16", "mismatch", (("offpolicy.rollout_dtype", "bfloat16"),)),
            Rung("fp16", "mismatch", (("offpolicy.rollout_dtype", "float16"),))]
    out += [Rung(f"noise={s}", "mismatch", (("offpolicy.logit_noise", s),)) for s in (0.3, 1.0)]
    out += [Rung(f"epochs={e}", "reuse", (("offpolicy.epochs", e),)) for e in (2, 4)]
    out += [Rung("minibatches=4", "reuse", (("offpolicy.mini_batches", 4),))]
    return {r.name: r for r in out}


RUNGS = _rungs()
FIXES: dict[str, Fix] = {f.name: f for f in (
    *(Fix(c, (("offpolicy.correction", c),), ROLLOUT_RATIO, predictor=c)
      for c in ("tis", "icepop", "masked_seq_is", "tis_two_sided", "seq_tis", "geo_rs")),
    *(Fix(loss, (("algo.policy_loss", loss),), REUSE)
      for loss in ("ppo_clip", "seq_ratio", "cispo", "sapo", "gmpo", "dppo_tv", "dppo_kl", "clip_cov", "kl_cov",
                   "ppo_clip_opsm")),
)}
"""Each with its defaults (trainer.algos): tis_two_sided low 0.5, seq_tis mode "truncate", geo_rs and
masked_seq_is convention "ratio"; cispo bounds "two_sided" (verl's), the rest as their docstrings say."""

COMMON = {
    "probes.save_stats": False,
    "probes.groups": "entropy,step,ratio,mismatch,pred,offpolicy",
    "run.collapse_reward_floor": 0.05,  # the cold start answers ~35-40% right; 5% is a broken policy
    "run.collapse_patience": 3,
    "run.collapse_entropy_high": 0.9,
    "run.collapse_kl_jump": 100.0,
}
"""Overrides every ladder run shares (the collapse detector on; only the probes the table reads)."""

QUICK = {
    "rungs": ["baseline", "staleness=1", "staleness=2", "staleness=4", "staleness=8", "bf16", "noise=1.0",
              "epochs=2", "epochs=4"],
    "fix_on": ["staleness=4", "noise=1.0", "epochs=4"],
    "fixes": ["tis", "icepop", "masked_seq_is", "geo_rs", "ppo_clip", "seq_ratio", "cispo"],
    "seeds": [0], "steps": 16,
    "overrides": {"rollout.prompts_per_step": 16, "rollout.group_size": 8},
}
FULL = {"rungs": list(RUNGS),
        "fix_on": ["staleness=2", "staleness=4", "staleness=8", "partial=3", "bf16", "noise=1.0", "epochs=4",
                   "minibatches=4"],
        "seeds": [0, 1, 2], "steps": 40, "overrides": {}}
"""The full ladder: every rung, the fixes on the worst rung of each kind, 3 seeds, the default batch (64 x 8)."""


@dataclass
class LadderPlan:
    """Which rungs and fixes a ladder runs, on which seeds, for how many steps (probe-check's plan of a
    hypothesis is probes/check/hypothesis.py `Plan`)."""

    rungs: list[str]
    fix_on: list[str]
    fixes: list[str]
    seeds: list[int]
    steps: int
    overrides: dict[str, Any] = field(default_factory=dict)
    mode: str = "custom"

    def pairs(self) -> list[tuple[str, str]]:
        """(rung, fix) in order: every rung unfixed, then each fixed rung with each fix that acts on it."""
        out = [(r, "none") for r in self.rungs]
        for r in self.fix_on:
            out += [(r, f) for f in self.fixes if RUNGS[r].family in FIXES[f].acts_on]
        return out

    def config(self, rung: str, fix: str, seed: int) -> dict[str, Any]:
        over = {**COMMON, **self.overrides, "run.steps": self.steps, "run.seed": seed}
        over.update(dict(RUNGS[rung].overrides))
        if fix != "none":
            over.update(dict(FIXES[fix].overrides))
        return over


def build_plan(quick: bool = False, rungs: Optional[list[str]] = None, fix_on: Optional[list[str]] = None,
               fixes: Optional[list[str]] = None, seeds: Optional[list[int]] = None, steps: Optional[int] = None,
               overrides: Optional[dict[str, Any]] = None) -> LadderPlan:
    base = QUICK if quick else FULL
    p = LadderPlan(rungs=list(rungs or base["rungs"]), fix_on=list(base["fix_on"] if fix_on is None else fix_on),
             fixes=list(fixes or base.get("fixes", FIXES)), seeds=list(seeds if seeds is not None else base["seeds"]),
             steps=int(steps or base["steps"]), overrides={**base["overrides"], **(overrides or {})},
             mode="quick" if quick else "full")
    if rungs is not None or fix_on is not None or fixes is not None or seeds is not None or steps is not None:
        p.mode += "+custom"
    for n in p.rungs + p.fix_on:
        if n not in RUNGS:
            raise ConfigError(f"unknown ladder rung {n!r}; known: {', '.join(RUNGS)}")
    for n in p.fixes:
        if n not in FIXES:
            raise ConfigError(f"unknown ladder fix {n!r}; known: {', '.join(FIXES)}")
    if fix_on is None:
        p.fix_on = [r for r in p.fix_on if r in p.rungs]
    elif set(p.fix_on) - set(p.rungs):
        raise ConfigError(f"--fix-on {', '.join(sorted(set(p.fix_on) - set(p.rungs)))}: not among the ladder's "
                          f"rungs ({', '.join(p.rungs)}); add them to --rungs")
    for r, f in p.pairs():
        validate(apply_overrides(TrainConfig(), p.config(r, f, p.seeds[0] if p.seeds else 0)))
    return p


# ----------------------------------------------------------------------------------------------
# Running


def _run_dir(out: Path, rung: str, fix: str, seed: int) -> Path:
    return out / "runs" / rung / fix / f"seed{seed}"


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Run (or reuse) one ladder run; returns its record. Runs in a worker process when --jobs > 1."""
    import torch

    from solidrl.probes.probeset import attach_probes
    from solidrl.trainer.loop import Trainer

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    d = Path(job["dir"])
    import dataclasses

    from solidrl.trainer import plugins  # a spawned worker imports the --plugin files again (docs/plugins.md)

    recs = plugins.load_all(job.get("plugins", ()))
    cfg = apply_overrides(TrainConfig(), job["overrides"])
    cfg = dataclasses.replace(cfg, plugins=tuple((r["path"], r["sha256"]) for r in recs))
    rec = {k: job[k] for k in ("rung", "fix", "seed", "dir")}
    status_p = d / "status.json"
    if status_p.exists() and (d / "config.json").exists():
        st = json.loads(status_p.read_text())
        same = json.loads((d / "config.json").read_text()) == json.loads(cfg.to_json())
        if st.get("status") in ("finished", "collapsed") and same:
            return {**rec, "status": st, "reused": True, "wall_s": 0.0, "cpu_s": 0.0}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        t = Trainer(cfg, d, progress=False)
        attach_probes(t)  # COMMON's probes.groups: the recorder's groups the table reads, and offpolicy
        st = t.run()
    except Exception as e:  # noqa: BLE001 - one broken run must not sink the ladder; it is reported
        st = {"status": "failed", "reason": f"{type(e).__name__}: {e}".splitlines()[0]}
        if d.exists():
            status_p.write_text(json.dumps(st, indent=2))
    return {**rec, "status": st, "reused": False, "wall_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(time.process_time() - c0, 2)}


def _nanmean(x: np.ndarray) -> Optional[float]:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


SUMMARY_KEYS = {
    "kl_step": ("kl/step", False),
    "clip_obs": ("rollout_ratio/clip_frac", True),
    "clip_pred": ("pred/clip_frac/rollout_ratio/clip_frac", True),
    "logvar_obs": ("rollout_ratio/log_var", True),
    "logvar_pred": ("pred/ratio_decomposition/rollout_ratio/log_var", True),
    "logvar_pred_coherent": ("pred/ratio_decomposition_coherent/rollout_ratio/log_var", True),
    "loss_clip": ("ratio/clip_frac", False),
    "touched_obs": ("correction/touched_frac", False),
}
"""summary name -> (metric key, averaged over the steady state only)."""


def summarize(rec: dict[str, Any], out: Path, steps: int) -> dict[str, Any]:
    """Per-run numbers of the table from its rows and status."""
    rows = read_rows(out / rec["dir"])
    warm = RUNGS[rec["rung"]].warm
    st = rec["status"]
    s: dict[str, Any] = {"collapse_step": st.get("step") if st.get("status") == "collapsed" else None,
                         "collapse_kind": st.get("kind"), "failed": st.get("status") == "failed"}
    acc = by_step(rows, "reward/accuracy", steps)
    done = acc[np.isfinite(acc)]
    s["final_acc"] = float(done[-3:].mean()) if done.size else None
    for name, (key, steady) in SUMMARY_KEYS.items():
        x = by_step(rows, key, steps)
        s[name] = _nanmean(x[warm:] if steady else x)
    pred = FIXES[rec["fix"]].predictor if rec["fix"] in FIXES else None
    if pred is not None:
        s["touched_pred"] = _nanmean(by_step(rows, f"pred/{pred}/correction/touched_frac", steps))
    return s


def aggregate(records: list[dict[str, Any]], plan: LadderPlan) -> list[dict[str, Any]]:
    """One table row per (rung, fix): seed means of the summaries, collapse steps per seed."""
    table = []
    for rung, fix in plan.pairs():
        recs = [r for r in records if r["rung"] == rung and r["fix"] == fix]
        row: dict[str, Any] = {"rung": rung, "fix": fix, "family": RUNGS[rung].family, "seeds": len(recs),
                               "collapse_steps": [r["summary"]["collapse_step"] for r in recs],
                               "collapse_kinds": [r["summary"]["collapse_kind"] for r in recs],
                               "failed": sum(r["summary"]["failed"] for r in recs)}
        for name in ["final_acc", *SUMMARY_KEYS, "touched_pred"]:
            vals = [r["summary"].get(name) for r in recs]
            vals = [v for v in vals if v is not None]
            row[name] = float(np.mean(vals)) if vals else None
            if len(vals) > 1:
                row[name + "_sd"] = float(np.std(vals, ddof=1))
        table.append(row)
    return table


def _f(x: Optional[float], spec: str = ".3g") -> str:
    return "–" if x is None else format(x, spec)


def format_table(table: list[dict[str, Any]]) -> str:
    head = ["rung", "fix", "collapse", "final acc", "kl/step", "clip obs", "clip pred", "log-var obs",
            "log-var pred [indep, aligned]", "loss clip", "touched obs / pred"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cs = [(c, k) for c, k in zip(r["collapse_steps"], r["collapse_kinds"]) if c is not None]
        coll = "none" if not cs else (f"{len(cs)}/{r['seeds']} at {','.join(str(c) for c, _ in cs)} "
                                      f"({','.join(sorted({str(k) for _, k in cs}))})")
        if r["failed"]:
            coll += f"; {r['failed']} failed"
        pred = "–" if r["logvar_pred"] is None else f"[{_f(r['logvar_pred'])}, {_f(r['logvar_pred_coherent'])}]"
        touched = "–" if r["touched_obs"] is None else f"{_f(r['touched_obs'])} / {_f(r.get('touched_pred'))}"
        acc = _f(r["final_acc"], ".3f") + (f" ± {r['final_acc_sd']:.3f}" if "final_acc_sd" in r else "")
        lines.append("| " + " | ".join([r["rung"], r["fix"], coll, acc, _f(r["kl_step"]), _f(r["clip_obs"]),
                                        _f(r["clip_pred"]), _f(r["logvar_obs"]), pred, _f(r["loss_clip"]),
                                        touched]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plots


def _mean_series(out: Path, records: list[dict], rung: str, fix: str, key: str, n: int) -> Optional[np.ndarray]:
    xs = [by_step(read_rows(out / r["dir"]), key, n) for r in records if r["rung"] == rung and r["fix"] == fix]
    if not xs:
        return None
    x = np.vstack(xs)
    with np.errstate(all="ignore"):
        m = np.nanmean(x, axis=0) if np.isfinite(x).any() else None
    return m


def write_plots(out: Path, plan: LadderPlan, records: list[dict], table: list[dict]) -> list[str]:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = out / "plots"
    d.mkdir(exist_ok=True)
    n, files = plan.steps, []
    steps = np.arange(n)
    panels = [("reward/accuracy", "accuracy", ()),
              ("rollout_ratio/log_var", "Var log(pi_train/pi_rollout); predicted: -- independent, : aligned steps",
               (("pred/ratio_decomposition/rollout_ratio/log_var", "--"),
                ("pred/ratio_decomposition_coherent/rollout_ratio/log_var", ":"))),
              ("kl/step", "kl/step", ()),
              ("rollout_ratio/clip_frac", "clip frac of pi_old/pi_rollout (dashed: predicted)",
               (("pred/clip_frac/rollout_ratio/clip_frac", "--"),))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        families = [f for f in ("staleness", "partial", "mismatch", "reuse") if any(RUNGS[r].family == f for r in plan.rungs)]
        for fam in families:
            rungs = [r for r in plan.rungs if RUNGS[r].family in ("baseline", fam)]
            fig, axes = plt.subplots(2, 2, figsize=(11, 7))
            for ax, (key, label, preds) in zip(axes.flat, panels):
                for i, r in enumerate(rungs):
                    c = f"C{i}"
                    y = _mean_series(out, records, r, "none", key, n)
                    if y is not None:
                        ax.plot(steps, y, color=c, label=r)
                    for pkey, ls in preds:
                        yp = _mean_series(out, records, r, "none", pkey, n)
                        if yp is not None:
                            ax.plot(steps, yp, color=c, ls=ls)
                ax.set_title(label, fontsize=9)
                ax.set_xlabel("step")
            axes.flat[0].legend(fontsize=7)
            fig.suptitle(f"ladder: {fam}")
            fig.tight_layout()
            p = d / f"{fam}.png"
            fig.savefig(p, dpi=90)
            plt.close(fig)
            files.append(str(p.relative_to(out)))
        for rung in plan.fix_on:
            fixes = ["none"] + [f for r, f in plan.pairs() if r == rung and f != "none"]
            if len(fixes) < 2:
                continue
            fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
            for i, fx in enumerate(fixes):
                y = _mean_series(out, records, rung, fx, "reward/accuracy", n)
                if y is not None:
                    axes[0].plot(steps, y, color=f"C{i}", label=fx)
                key = "correction/touched_frac" if RUNGS[rung].family in ROLLOUT_RATIO else "ratio/clip_frac"
                y = _mean_series(out, records, rung, fx, key, n)
                if y is not None:
                    axes[1].plot(steps, y, color=f"C{i}", label=fx)
                pname = FIXES[fx].predictor if fx in FIXES else None
                yp = _mean_series(out, records, rung, fx, f"pred/{pname}/correction/touched_frac", n) if pname else None
                if yp is not None and key == "correction/touched_frac":
                    axes[1].plot(steps, yp, color=f"C{i}", ls="--")
            base = _mean_series(out, records, "baseline", "none", "reward/accuracy", n)
            if base is not None:
                axes[0].plot(steps, base, color="k", ls=":", label="baseline")
            axes[0].set_title(f"{rung}: accuracy per fix", fontsize=9)
            axes[1].set_title(f"{rung}: " + ("touched frac (dashed: predicted)" if key == "correction/touched_frac"
                                             else "loss clip frac"), fontsize=9)
            axes[0].legend(fontsize=7)
            fig.tight_layout()
            p = d / f"fix_{rung}.png"
            fig.savefig(p, dpi=90)
            plt.close(fig)
            files.append(str(p.relative_to(out)))
        rows = [r for r in table if r["fix"] == "none"]
        fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 4))
        x = np.arange(len(rows))
        obs = [r["logvar_obs"] if r["logvar_obs"] is not None else np.nan for r in rows]
        lo = [r["logvar_pred"] if r["logvar_pred"] is not None else np.nan for r in rows]
        hi = [r["logvar_pred_coherent"] if r["logvar_pred_coherent"] is not None else np.nan for r in rows]
        ax.vlines(x, lo, hi, color="C1", lw=6, alpha=0.5, label="predicted [independent, aligned steps]")
        ax.plot(np.r_[x, x], np.r_[lo, hi], "_", color="C1", ms=14, mew=2)
        ax.plot(x, obs, "o", color="C0", label="observed")
        ax.set_xticks(x, [r["rung"] for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_yscale("symlog", linthresh=1e-4)
        top = np.nanmax([*obs, *hi, 1e-4])
        ax.set_ylim(0, top * 3)  # headroom: the largest point is not cut by the frame
        ax.set_ylabel("Var log(pi_train / pi_rollout)")
        ax.legend(fontsize=8, loc="upper left")  # the rungs on the left have the smallest variances
        fig.tight_layout()
        p = d / "summary.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        files.append(str(p.relative_to(out)))
    return files


# ----------------------------------------------------------------------------------------------
# The ladder


def run_ladder(plan: LadderPlan, out: str | Path, jobs: int = 1, progress: bool = True) -> dict[str, Any]:
    """Run every (rung, fix, seed) of the plan and write ladder.json, ladder.md and plots/."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    todo = [{"rung": r, "fix": f, "seed": s, "dir": str(_run_dir(out, r, f, s).relative_to(out)),
             "overrides": plan.config(r, f, s), "threads": threads}
            for r, f in plan.pairs() for s in plan.seeds]
    for j in todo:
        j["dir_abs"] = str(out / j["dir"])
    records: list[dict] = []

    def done(rec: dict) -> None:
        records.append(rec)
        if progress:
            st = rec["status"]
            extra = f" at step {st.get('step')}: {st.get('reason')}" if st.get("status") != "finished" else ""
            took = "reused" if rec["reused"] else f"{rec['wall_s']:.0f}s"
            print(f"[{len(records)}/{len(todo)}] {rec['rung']} / {rec['fix']} / seed {rec['seed']}: "
                  f"{st.get('status')}{extra} ({took})", file=sys.stderr, flush=True)

    from solidrl.trainer import plugins

    jobs_in = [{**j, "dir": j["dir_abs"], "plugins": [r["path"] for r in plugins.loaded()]} for j in todo]
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
            for rec in ex.map(_run_one, jobs_in):
                done(rec)
    else:
        for j in jobs_in:
            done(_run_one(j))
    for rec, j in zip(records, todo):
        rec["dir"] = j["dir"]
        rec["summary"] = summarize(rec, out, plan.steps)
    table = aggregate(records, plan)
    wall = time.perf_counter() - t0
    cpu = sum(r["cpu_s"] for r in records)
    result = {"plan": asdict(plan), "common_overrides": COMMON, "runs": records, "table": table,
              "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cpus": os.cpu_count(),
              "load_avg_start": round(load0, 2), "load_avg_end": round(os.getloadavg()[0], 2), "jobs": jobs}
    md = format_table(table)
    result["plots"] = write_plots(out, plan, records, table)
    (out / "ladder.json").write_text(json.dumps(result, indent=2))
    (out / "ladder.md").write_text(
        f"# solidrl ladder ({plan.mode}: {len(plan.seeds)} seed(s), {plan.steps} steps)\n\n{md}\n\n"
        f"Wall time {wall:.0f} s, CPU time of the runs {cpu:.0f} s, on {os.cpu_count()} CPUs (load average "
        f"{load0:.1f} at start: other jobs share the machine when it exceeds the CPU count), {jobs} job(s).\n"
        "log-var = Var over loss tokens of log(pi_train/pi_rollout) (steady state); predictions from "
        "derive_ratio_decomposition (2 kl/step per step of lag) and the clip_frac predictor; see docs/ladder.md.\n")
    return result


def _csv(s: Optional[str]) -> Optional[list[str]]:
    return None if s is None else [x.strip() for x in s.split(",") if x.strip()]


@user_errors("solidrl ladder")
def cmd_ladder(args) -> int:
    over = parse_set_args(args.set or [])
    if args.task:
        over["task.name"] = args.task
    if args.model_size:
        over["model.size"] = args.model_size
    plan = build_plan(args.quick, _csv(args.rungs), _csv(args.fix_on), _csv(args.fixes), args.seeds, args.steps, over)
    out = Path(args.out or ("runs/ladder-quick" if args.quick else "runs/ladder"))
    n = len(plan.pairs()) * len(plan.seeds)
    print(f"ladder ({plan.mode}): {n} runs of {plan.steps} steps -> {out}", file=sys.stderr)
    res = run_ladder(plan, out, jobs=args.jobs, progress=not args.quiet)
    print(format_table(res["table"]))
    print(f"wall time {res['wall_s']:.0f} s (CPU time of the runs {res['cpu_s']:.0f} s, load average "
          f"{res['load_avg_start']} on {res['cpus']} CPUs); table {out / 'ladder.md'}, plots in {out / 'plots'}")
    return 0


def setup(p) -> None:
    p.add_argument("--quick", action="store_true",
                   help=f"{len(QUICK['rungs'])} rungs, fixes {', '.join(QUICK['fixes'])} on {', '.join(QUICK['fix_on'])}, 1 seed, "
                        f"{QUICK['steps']} steps of 16x8 samples (about 10 minutes on 2 cores)")
    p.add_argument("--out", help="output directory (default runs/ladder or runs/ladder-quick)")
    p.add_argument("--rungs", help=f"comma-separated rungs (known: {', '.join(RUNGS)})")
    p.add_argument("--fix-on", help="comma-separated rungs to run with each fix ('' for none)")
    p.add_argument("--fixes", help=f"comma-separated fixes (known: {', '.join(FIXES)})")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--steps", type=int)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (worker processes); default 1")
    p.add_argument("--task", help="registered task name (default addition)")
    p.add_argument("--model-size", help="named model size (default nano)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field in every run")
    p.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    p.set_defaults(func=cmd_ladder)


HELP = "run the baseline, rungs of increasing off-policy breakage, and each fix; table + plots"

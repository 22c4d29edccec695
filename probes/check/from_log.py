"""probe-check HYP.toml --from-log ARM=FILE ...: judge a hypothesis on logs of runs made elsewhere.

The logs are read by probes/integrations/logs.py (formats, the name map, what is exact); here they
become run directories under --out and are judged like probe-check's own runs. What can be judged
from a log, and what cannot (per-step predictions without solidrl's statistics, counterfactual ones
always), is stated in that module's docstring and in docs/probe-check.md.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from solidrl.probes.integrations.logs import NAME_MAP, Log, LogError, describe, names_for, read_log

from . import hypothesis as hyp_mod
from . import report
from .hypothesis import Hypothesis
from .judge import judge_all


@dataclass(frozen=True)
class Source:
    arm: str
    seed: int
    file: str


def parse_sources(items: list[str], hyp: Hypothesis) -> list[Source]:
    """'[ARM[@SEED]=]FILE' items -> sources. A bare FILE is allowed when the predictions read one arm."""
    arms = hyp.arm_names
    out: list[Source] = []
    counters: dict[str, int] = {}
    for it in items:
        if "=" in it:
            head, file = it.split("=", 1)
            arm, _, seed_s = head.partition("@")
            if arm not in arms:
                raise LogError("--from-log", f"{it!r}: unknown arm {arm!r}; the hypothesis's arms: {', '.join(arms)}")
            if seed_s:
                try:
                    seed = int(seed_s)
                except ValueError:
                    raise LogError("--from-log", f"{it!r}: the seed after '@' must be an integer") from None
            else:
                seed = counters.get(arm, 0)
        else:
            used = hyp.arms_to_run()
            if len(used) != 1:
                raise LogError("--from-log", f"{it!r}: say which arm each log is, as ARM=FILE "
                                             f"(the predictions read arms {', '.join(used)})")
            arm, file, seed = used[0], it, counters.get(used[0], 0)
        counters[arm] = seed + 1
        if any(s.arm == arm and s.seed == seed for s in out):
            raise LogError("--from-log", f"two logs for arm {arm!r} seed {seed}; number them ARM@SEED=FILE")
        out.append(Source(arm, seed, file))
    return out


def _not_judgeable(hyp: Hypothesis, p, logs: dict[tuple[str, int], Log]) -> Optional[str]:
    """Why prediction p cannot be judged from these logs, or None."""
    if p.kind == "per_step" and not all(lg.format == "solidrl" and lg.every == 1 for (a, _), lg in logs.items()
                                        if a == p.arms[0]):
        return ("not judgeable from a log: a per-step prediction needs solidrl's per-step batch statistics "
                "(a TRL run with solidrl's callback writes them: give its solidrl/metrics.jsonl)")
    if p.kind == "counterfactual":
        return ("not judgeable from a log: a counterfactual needs both updates taken from the same weights "
                "and batch (solidrl's shadow step)")
    key = p.pred_key
    if key is not None:
        have = [lg for (a, _), lg in logs.items() if a == p.arms[0] and any(key in r for r in lg.rows.values())]
        if not have:
            return (f"not judgeable from a log: {key} is a predictor output computed from solidrl's per-step "
                    f"statistics, and the {p.arms[0]} log(s) do not carry it (a TRL run with solidrl's callback does)")
    return None


def _check_metrics(hyp: Hypothesis, p, logs: dict[tuple[str, int], Log]) -> None:
    """A metric the prediction reads that a log of its arms lacks is a one-line error."""
    # a trajectory's `metric` names the predictor's output; the series it reads is `observed`
    wanted = [(p.observed, f"{p.field}.observed")] if p.kind == "trajectory" else [(p.metric, f"{p.field}.metric")]
    for (arm, seed), lg in sorted(logs.items()):
        if arm not in p.arms_used():
            continue
        names = lg.names()
        for key, fld in wanted:
            if key not in names:
                mapped = [n for n in NAME_MAP if n.target == key]
                hint = ("; it maps from " + ", ".join(f"{n.engine} {n.source!r}" for n in mapped)) if mapped else \
                    "; no engine logs it (see docs/scaling.md, names)"
                raise LogError(lg.file, f"{fld} reads {key!r}, which this {lg.format} log does not provide{hint}; "
                                        f"it provides: {', '.join(n for n in names if not n.startswith('pred/'))}")


def write_runs(logs: dict[tuple[str, int], Log], out: Path) -> dict[str, Any]:
    """One run directory per log (out/runs/ARM/seedS/metrics.jsonl) and the record judge_all reads."""
    n = max(lg.steps for lg in logs.values())
    runs = []
    for (arm, seed), lg in sorted(logs.items()):
        d = out / "runs" / arm / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "metrics.jsonl", "w") as f:
            for s in sorted(lg.rows):
                row = {k: (v if math.isfinite(v) else None) for k, v in lg.rows[s].items()}
                f.write(json.dumps({"step": s, **row}) + "\n")
        (d / "SOURCE").write_text(f"{lg.format} log {Path(lg.file).resolve()}\n")
        runs.append({"arm": arm, "seed": seed, "dir": str(d.relative_to(out)), "status": "finished",
                     "reason": None, "counterfactual": [], "log": lg.file, "log_format": lg.format})
    seeds = sorted({s for _, s in logs})
    return {"hypothesis": None, "mode": "from-log", "steps": n, "seeds": seeds, "overrides": {}, "runs": runs}


def judge_logs(hyp: Hypothesis, sources: list[Source], out: Path) -> dict[str, Any]:
    """Read the logs, judge what they can support, report the rest as not judgeable; returns the result dict."""
    logs = {(s.arm, s.seed): read_log(s.file) for s in sources}
    blocked = {p.index: why for p in hyp.predictions if (why := _not_judgeable(hyp, p, logs))}
    judgeable = [p for p in hyp.predictions if p.index not in blocked]
    for p in judgeable:
        missing = [a for a in p.arms_used() if not any(arm == a for arm, _ in logs)]
        if missing:
            raise LogError("--from-log", f"{p.field} ({p.label!r}) reads arm(s) {', '.join(missing)}: "
                                         f"give a log for each, as {missing[0]}=FILE")
        _check_metrics(hyp, p, logs)
    record = write_runs(logs, out)
    record["hypothesis"] = hyp.name
    result = judge_all(replace(hyp, predictions=tuple(judgeable)), out, record)
    entries = {e["index"]: e for e in result["predictions"]}
    for p in judgeable:
        e = entries[p.index]
        for arm, seed in logs:
            lg = logs[(arm, seed)]
            if arm in p.arms_used():
                for key in [p.observed if p.kind == "trajectory" else p.metric]:
                    if key in lg.approx:
                        n = next(x for x in names_for(lg.format) if x.source == lg.approx[key])
                        e["notes"].append(f"{arm} seed {seed}: {describe(n)} is not exactly solidrl's {key}")
                if lg.every > 1:
                    e["notes"].append(f"{arm} seed {seed}: logged every {lg.every} steps; each value is "
                                      f"the mean over those steps, placed at the last")
    for i, why in blocked.items():
        p = hyp.predictions[i]
        entries[i] = {"index": i, "label": p.label, "kind": p.kind, "metric": p.metric,
                      "arms": list(p.arms_used()), "window": None, "note": p.note, "seeds": [],
                      "verdict": "inconclusive", "criteria": [], "notes": [why],
                      "predicted": "not judgeable", "observed": "not judgeable from a log"}
    preds = [entries[p.index] for p in hyp.predictions]
    counts = {v: sum(e["verdict"] == v for e in preds) for v in ("confirmed", "refuted", "inconclusive")}
    result.update(predictions=preds, summary=counts, not_judgeable=sorted(blocked),
                  exit_code=0 if counts["confirmed"] == len(preds) else 1,
                  logs=[{"arm": a, "seed": s, "file": lg.file, "format": lg.format, "steps": lg.steps,
                         "every": lg.every} for (a, s), lg in sorted(logs.items())])
    return result


def run_from_log(args) -> int:
    """probe-check HYP --from-log ...: judge, write report.json / report.md / plots, print the table."""
    if not args.hypothesis:
        raise LogError("<command line>", "--from-log needs the hypothesis file: probe-check HYP.toml --from-log ARM=FILE ...")
    if args.from_run or args.seeds or args.steps or args.quick:
        raise LogError("--from-log", "takes the logs as they are; --from-run, --seeds, --steps and --quick do not apply")
    hyp = hyp_mod.load(args.hypothesis, tuple(getattr(args, "plugin", None) or ()))
    out = Path(args.out) if args.out else Path("runs") / "probe-check" / f"{hyp.name}-from-log"
    out.mkdir(parents=True, exist_ok=True)
    (out / "hypothesis.toml").write_text(hyp.text)
    result = judge_logs(hyp, parse_sources(args.from_log, hyp), out)
    from solidrl.trainer.io import atomic_write_json
    atomic_write_json(out / "plan.json", {k: v for k, v in result.items() if k in ("mode", "steps", "seeds", "runs", "logs")})
    report.write(result, out, plots=not args.no_plots)
    report.print_table(result)
    if not args.quiet:
        print(f"report: {out / 'report.md'}", file=sys.stderr)
    return result["exit_code"]



"""probe-check: run a hypothesis's arms and seeds on the trainer with probes, then judge its predictions.

    probe-check HYPOTHESIS.toml [--out DIR] [--seeds 0 1 2] [--steps N] [--quick] [--quiet]
    probe-check --from-run DIR [HYPOTHESIS.toml] [--out DIR2]      # re-judge, no training
    probe-check HYPOTHESIS.toml --from-log ARM=FILE ...           # judge TRL / verl logs (probes/check/from_log.py)
    probe-check ... --json                                        # the verdicts as JSON on stdout
    probe-check ... --report-to tensorboard wandb                 # runs and verdicts to trackers

Each (arm, seed) is one ordinary run directory, `<out>/runs/<arm>/seed<s>/` (config.json,
metrics.jsonl, stats/), with `solidrl train`'s probe set attached. Seed s of every arm starts from the same
cached cold start (sft.seed + s by default; one for all seeds with [run] cold_start = "shared") and
sees the same prompts at every step (prompts are drawn from (run.seed, step)): the A/B is paired.

A counterfactual pair (baseline arm B, treatment arm T) runs inside B's runs: before each of B's
steps, a shadow trainer with T's config is given B's weights and optimizer state and takes that
step; sampling is seeded by (run.seed, step) and happens before grading, so both updates start from
the same weights with the same batch (checked: a fingerprint of the sampled tokens must match; the
shadow's rows go to `<out>/runs/<B>/seed<s>/cf-<T>/metrics.jsonl`). B's own trajectory is untouched.

Then every prediction is judged (probes/check/verdict.py) and reported (probes/check/report.py): a table on the
terminal, report.json, report.md, plots/*.png. Exit code: 0 every prediction confirmed, 1 any refuted
or inconclusive (or a run failed), 2 invalid input (one line on stderr, never a traceback).

--json prints report.json (every prediction's verdict, predicted and observed values, intervals) to
stdout and nothing else there: the human table goes to stderr (suppressed by --quiet), so
`probe-check H.toml --json > verdicts.json` keeps the terminal readable and the file parseable.
Piped or redirected output (stderr not a terminal) has one line per finished phase (the cold start,
each run, the judging) instead of progress-bar frames.

--report-to sends each (arm, seed) run's config and rows, then the verdicts (report.md's text, the
plots, the counts) as a `<name>/verdicts` run (probes/integrations/trackers.py); the runs are sent
when they are all finished. A tracker whose package is missing stops the command before any run.

Left out on purpose: running arms in parallel processes (the machine's cores already serve torch's
intra-op threads), and reusing finished runs of an earlier invocation (use --from-run for that).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Optional

from solidrl.probes.check import hypothesis as hyp_mod
from solidrl.probes.check import report
from solidrl.probes.check.from_log import run_from_log
from solidrl.probes.check.hypothesis import HypothesisError
from solidrl.probes.check.judge import judge_all
from solidrl.probes.check.run import PROG, check_runs_match, load_record, run_all
from solidrl.probes.errors import InputError
from solidrl.probes.integrations import trackers
from solidrl.trainer import plugins
from solidrl.trainer.config import ConfigError
from solidrl.trainer.io import atomic_write_json

from .common import USER_OS_ERRNOS, OneLineParser, check_out_dir, one_line, os_error_line

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


def arm_entries(hyp, record: dict) -> dict[str, list[dict]]:
    """arm -> the registry entries its config selects that have parameters or come from a plugin:
    [{"field", "name", "origin", "params" (declared defaults <- set values)}] (shown in report.md)."""
    from solidrl.theory.registry import BUILTIN, registries
    from solidrl.trainer.config import ConfigError

    plan = hyp_mod.Plan(steps=record["steps"], seeds=tuple(record["seeds"]) or (0,),
                        overrides=tuple(record.get("overrides", {}).items()))
    out: dict[str, list[dict]] = {}
    for arm in hyp.arm_names:
        try:
            cfg = hyp_mod.arm_config(hyp, arm, plan, plan.seeds[0])
        except ConfigError:
            continue
        rows = []
        for reg in registries():
            if reg.field is None:
                continue
            sec, fld = reg.field.split(".", 1)
            name = getattr(getattr(cfg, sec), fld)
            if name not in reg:
                continue
            origin = reg.origin(name)
            if reg.params(name) or origin != BUILTIN:
                rows.append({"field": reg.field, "name": name, "origin": origin,
                             "params": cfg.entry_params(reg.field)})
        out[arm] = rows
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog=PROG, description=__doc__.splitlines()[0],
                                 epilog="Exit code: 0 all confirmed, 1 any refuted/inconclusive, 2 invalid input.")
    ap.add_argument("hypothesis", nargs="?", help="hypothesis TOML file (see docs/probe-check.md)")
    ap.add_argument("--out", help="output directory (default runs/probe-check/<name>[-quick])")
    ap.add_argument("--seeds", nargs="+", metavar="S", help="seeds to run, e.g. --seeds 0 1 2 or 0,1,2")
    ap.add_argument("--steps", type=int, help="steps per run (overrides the file)")
    ap.add_argument("--quick", action="store_true", help="use the file's [run.quick] reductions")
    ap.add_argument("--from-run", metavar="DIR", help="re-judge an earlier probe-check directory without training")
    ap.add_argument("--from-log", nargs="+", metavar="[ARM[@SEED]=]FILE",
                    help="judge logs of runs made elsewhere (TRL trainer_state.json, verl JSONL): probes/integrations/logs.py")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads per run (default 1; 0 = torch's default) unless the file sets run.threads")
    ap.add_argument("--plugin", action="append", metavar="FILE", default=[],
                    help="a Python file registering estimators, tasks, predictors... (repeatable; docs/plugins.md)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--json", action="store_true",
                    help="print report.json (the verdicts) to stdout; the table goes to stderr (none with --quiet)")
    ap.add_argument("--report-to", nargs="+", metavar="NAME",
                    help="send the runs' configs and rows and the verdicts to trackers: tensorboard, wandb, trackio "
                         "(or none), as transformers' report_to; each is an extra: pip install -e '.[NAME]'")
    ap.add_argument("--validate", action="store_true",
                    help="check the file, every arm's config, --out and the models without training; "
                         "exit 0 valid, 2 not; writes nothing")
    return ap


def _check_models(hyp, plan) -> None:
    """Every arm's model.path loads (once per path), before any run directory is made."""
    from solidrl.trainer.model import ModelLoadError, load_pretrained

    seen = set()
    for arm in hyp.arms_to_run():
        cfg = hyp_mod.arm_config(hyp, arm, plan, plan.seeds[0])
        if cfg.model.path and cfg.model.path not in seen:
            seen.add(cfg.model.path)
            try:
                load_pretrained(cfg.model.path, cfg.model.dtype, "cpu")
            except ModelLoadError as e:
                raise HypothesisError(hyp.file, hyp_mod._arm_field(hyp, arm, plan, "model.path"), str(e)) from None


def run_check(args) -> int:
    report_to = trackers.parse_report_to(args.report_to)
    trackers.check_installed(report_to)  # before any run: a missing extra is one line, exit 2
    if report_to and args.from_log:
        raise trackers.TrackerError("does not apply to --from-log: the logs' own trainer reports those runs")
    if not args.json:
        return _run(args, report_to)[0]
    stdout = sys.stdout
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null if args.quiet else sys.stderr):
        code, out = _run(args, report_to)
    stdout.write((out / "report.json").read_text() + "\n")
    stdout.flush()
    return code


def _run(args, report_to: tuple[str, ...]) -> tuple[int, Path]:
    """Run (or re-read) the runs, judge, write and print the report, send it; returns (exit code, out dir)."""
    if args.from_log:
        name = hyp_mod.load(args.hypothesis).name if args.hypothesis else ""
        out = Path(args.out) if args.out else Path("runs") / "probe-check" / f"{name}-from-log"
        return run_from_log(args), out  # run_from_log writes there (probes/check/from_log.py)
    if args.from_run:
        src = Path(args.from_run)
        record = load_record(src)
        try:  # the plugins the runs were made with, unchanged, before any name in the file is looked up
            plugins.verify(record.get("plugins", []), str(src / "plan.json"))
        except plugins.PluginError as e:
            raise HypothesisError(str(src), "--from-run", str(e)) from None
        hfile = Path(args.hypothesis) if args.hypothesis else src / "hypothesis.toml"
        base = Path(record["plugin_base"]) if not args.hypothesis and record.get("plugin_base") else None
        recorded = tuple(r["path"] for r in record.get("plugins", []))  # loaded above: no-ops, kept in hyp.plugins
        hyp = hyp_mod.load(hfile, recorded + tuple(args.plugin), plugin_base=base)
        if args.seeds or args.steps or args.quick:
            raise HypothesisError(str(hfile), "--from-run", "takes the runs as they are; "
                                  "--seeds, --steps and --quick apply to new runs only")
        check_runs_match(hyp, record, src)
        out = Path(args.out) if args.out else src
    else:
        if not args.hypothesis:
            raise HypothesisError("<command line>", "", "give a hypothesis file, or --from-run DIR")
        hyp = hyp_mod.load(args.hypothesis, tuple(args.plugin))
        plan = hyp_mod.resolve_plan(hyp, quick=args.quick, steps=args.steps,
                                    seeds=_seeds(args.seeds) if args.seeds else None, threads=args.threads)
        out = Path(args.out) if args.out else Path("runs") / "probe-check" / (hyp.name + ("-quick" if args.quick else ""))
        check_out_dir(out)
        _check_models(hyp, plan)
        if args.validate:
            n = len(hyp.arms_to_run()) * len(plan.seeds)
            print(f"valid: {hyp.name}: {len(hyp.predictions)} predictions, {n} runs of {plan.steps} steps; "
                  "nothing was written")
            return 0, out
        t0 = time.perf_counter()
        record = run_all(hyp, plan, out, progress=not args.quiet, mode="quick" if args.quick else "default")
        record["wall_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(out / "plan.json", record)
        src = out
    t0 = time.perf_counter()
    result = judge_all(hyp, src, record)
    result["wall_s"] = record.get("wall_s")
    result["entries"], result["plugins"] = arm_entries(hyp, record), list(hyp.plugins)
    out.mkdir(parents=True, exist_ok=True)
    clean = report.write(result, out, plots=not args.no_plots)
    if not args.quiet:
        print(f"judged {len(result['predictions'])} predictions on {len(record['runs'])} runs "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    report.print_table(result)
    if report_to:
        runs = [(f"{r['arm']}/seed{r['seed']}", src / r["dir"]) for r in record["runs"]]
        plots = [(f"plots/{Path(e['plot']).stem}", out / e["plot"]) for e in clean["predictions"]
                 if e.get("plot")]
        summary = {**result["summary"], "exit_code": result["exit_code"], "mode": result["mode"],
                   "steps": result["steps"]}
        trackers.report_check(report_to, out, hyp.name, runs, (out / "report.md").read_text(), plots, summary)
    if not args.quiet:
        print(f"report: {out / 'report.md'}", file=sys.stderr)
    return result["exit_code"], out


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.validate and (args.from_run or args.from_log):
            raise HypothesisError("<command line>", "--validate", "checks a hypothesis file for new runs; "
                                  "it does not combine with --from-run or --from-log")
        return run_check(args)
    except (InputError, ConfigError) as e:
        print(f"{PROG}: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in USER_OS_ERRNOS:
            raise
        print(os_error_line(PROG, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the run directories written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""probe-check: run a hypothesis's arms and seeds on the trainer with probes, then judge its predictions.

    probe-check HYPOTHESIS.toml [--out DIR] [--seeds 0 1 2] [--steps N] [--quick] [--quiet]
    probe-check --from-run DIR [HYPOTHESIS.toml] [--out DIR2]      # re-judge, no training
    probe-check HYPOTHESIS.toml --from-log ARM=FILE ...           # judge TRL / verl logs (probes/check/from_log.py)

Each (arm, seed) is one ordinary run directory, `<out>/runs/<arm>/seed<s>/` (config.json,
metrics.jsonl, stats/), with the probes' recorder attached. All seeds of all arms share the cached
cold start, and seed s of every arm sees the same prompts at every step (prompts are drawn from
(run.seed, step)), which is what makes the A/B bootstrap paired.

A counterfactual pair (baseline arm B, treatment arm T) runs inside B's runs: before each of B's
steps, a shadow trainer with T's config is given B's weights and optimizer state and takes that
step; sampling is seeded by (run.seed, step) and happens before grading, so both updates start from
the same weights with the same batch (checked: a fingerprint of the sampled tokens must match; the
shadow's rows go to `<out>/runs/<B>/seed<s>/cf-<T>/metrics.jsonl`). B's own trajectory is untouched.

Then every prediction is judged (probes/check/verdict.py) and reported (probes/check/report.py): a table on the
terminal, report.json, report.md, plots/*.png. Exit code: 0 every prediction confirmed, 1 any refuted
or inconclusive (or a run failed), 2 invalid input (one line on stderr, never a traceback).

Left out on purpose: running arms in parallel processes (the machine's cores already serve torch's
intra-op threads), and reusing finished runs of an earlier invocation (use --from-run for that).
"""
from __future__ import annotations

import argparse
import json
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
from solidrl.trainer.config import ConfigError
from solidrl.trainer.io import atomic_write_json

from .common import USER_OS_ERRNOS, OneLineParser, check_out_dir, one_line

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
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
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
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    if args.from_log:
        return run_from_log(args)
    if args.from_run:
        src = Path(args.from_run)
        record = load_record(src)
        hfile = Path(args.hypothesis) if args.hypothesis else src / "hypothesis.toml"
        hyp = hyp_mod.load(hfile)
        if args.seeds or args.steps or args.quick:
            raise HypothesisError(str(hfile), "--from-run", "takes the runs as they are; "
                                  "--seeds, --steps and --quick apply to new runs only")
        check_runs_match(hyp, record, src)
        out = Path(args.out) if args.out else src
    else:
        if not args.hypothesis:
            raise HypothesisError("<command line>", "", "give a hypothesis file, or --from-run DIR")
        hyp = hyp_mod.load(args.hypothesis)
        plan = hyp_mod.resolve_plan(hyp, quick=args.quick, steps=args.steps,
                                    seeds=_seeds(args.seeds) if args.seeds else None, threads=args.threads)
        out = Path(args.out) if args.out else Path("runs") / "probe-check" / (hyp.name + ("-quick" if args.quick else ""))
        check_out_dir(out)
        _check_models(hyp, plan)
        if args.validate:
            n = len(hyp.arms_to_run()) * len(plan.seeds)
            print(f"valid: {hyp.name}: {len(hyp.predictions)} predictions, {n} runs of {plan.steps} steps; "
                  "nothing was written")
            return 0
        t0 = time.perf_counter()
        record = run_all(hyp, plan, out, progress=not args.quiet, mode="quick" if args.quick else "default")
        record["wall_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(out / "plan.json", record)
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
        where = f" {e.filename}" if e.filename else ""
        print(f"{PROG}: error: cannot write{one_line(where)}: {e.strerror or e}; free space or choose another "
              "--out (what was written before is kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the run directories written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

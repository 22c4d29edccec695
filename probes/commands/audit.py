"""`solidrl audit RUN_DIR`: print a run's perfect-baseline audit (the checklist: probes/audit.py)."""
from __future__ import annotations

import json
from pathlib import Path

from solidrl.probes.audit import MISMATCH_MAX, TRUNCATION_MAX, audit_run

from .common import user_errors


@user_errors("solidrl audit")
def cmd_audit(args) -> int:
    res = audit_run(args.run_dir, args.mismatch_max, args.truncation_max)
    print(res.format())
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_dict(), indent=2))
    return 0 if res.passed else 1


def setup(p) -> None:
    p.add_argument("run_dir", help="a run directory written by `solidrl train` (config.json, metrics.jsonl)")
    p.add_argument("--mismatch-max", type=float, default=MISMATCH_MAX,
                   help=f"largest |log pi_train - log pi_rollout| allowed, nats (default {MISMATCH_MAX:g})")
    p.add_argument("--truncation-max", type=float, default=TRUNCATION_MAX,
                   help=f"largest mean truncated fraction allowed (default {TRUNCATION_MAX:g})")
    p.add_argument("--json", help="also write the result as JSON to this file")
    p.set_defaults(func=cmd_audit)


HELP = "check a run against the perfect-baseline checklist (pass/fail per item, measured values)"

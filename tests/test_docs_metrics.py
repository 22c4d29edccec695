"""docs/metrics.md defines every key a `solidrl train` run writes (every probe on, the audit included)."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import read_rows, tiny_overrides
from test_integrations_logs import _glossary_names, _pattern

from solidrl.probes.commands.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_every_key_of_a_train_run_is_in_the_glossary(tmp_path):
    over = tiny_overrides(**{"run.steps": 2, "probes.audit_every": 1, "probes.jvp_every": 1})
    sets = [x for k, v in over.items() for x in ("--set", f"{k}={v}")]
    assert main(["train", "--quiet", "--out", str(tmp_path / "r"), *sets]) == 0
    keys = {k for r in read_rows(tmp_path / "r") for k in r}
    assert len(keys) > 80
    # `pred/<predictor>/<metric>`: the metric is any observed key, slashes included
    pats = [re.compile(_pattern(n.replace("<metric>", "METRIC")).pattern.replace("METRIC", ".+")) if "<metric>" in n
            else _pattern(n) for n in _glossary_names((ROOT / "docs" / "metrics.md").read_text())]
    missing = sorted(k for k in keys if not any(p.match(k) for p in pats))
    assert not missing, f"keys docs/metrics.md does not define: {missing}"

"""`solidrl audit`: the default run passes every item; a stale, truncating or regularized run fails, naming it."""
import json

import pytest

from conftest import tiny_overrides
from solidrl.probes.audit import audit_run, grader_accuracy
from solidrl.probes.commands.cli import main
from solidrl.trainer.config import TrainConfig, apply_overrides

ITEMS = ["on_policy", "mismatch", "truncation", "grader", "no_regularizers", "no_staleness",
         "loss_terms", "consistency"]  # the last two: probes/loss_audit.py


def train_cli(out, **over):
    sets = [x for k, v in tiny_overrides(**{"run.steps": 2, **over}).items() for x in ("--set", f"{k}={v}")]
    assert main(["train", "--quiet", "--out", str(out), *sets]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit")
    train_cli(d / "default")
    train_cli(d / "stale", **{"offpolicy.staleness": 2})
    return d


def test_the_default_run_passes_every_item_with_measured_values(runs):
    res = audit_run(runs / "default")
    assert res.passed and [i.name for i in res.items] == ITEMS
    assert all(i.passed for i in res.items)
    assert all(i.source.startswith("measured") for i in res.items)  # the probes' rows were there
    assert "max|r-1| = 0 over 2 steps" in res.item("on_policy").measured


def test_staleness_two_fails_naming_the_item(runs, capsys):
    res = audit_run(runs / "stale")
    assert res.failed == ["no_staleness"]
    assert "max lag 1" in res.item("no_staleness").measured  # 2 steps: the lag reaches 1 of the 2
    assert main(["audit", str(runs / "stale"), "--json", str(runs / "stale.json")]) == 1
    out = capsys.readouterr().out
    assert "FAIL (no_staleness)" in out
    assert json.loads((runs / "stale.json").read_text())["failed"] == ["no_staleness"]


def test_a_truncating_run_fails_on_truncation(tmp_path):
    # addition answers need up to 3 digits + EOS; a budget of 2 cuts most of them
    assert main(["train", "--quiet", "--out", str(tmp_path), "--steps", "1", "--set", "task.max_new_tokens=2",
                 "--set", "rollout.prompts_per_step=8", "--set", "rollout.group_size=4"]) == 0
    res = audit_run(tmp_path)
    assert "truncation" in res.failed and res.item("truncation").measured.startswith("mean ")


def test_regularizers_reuse_and_low_precision_fail_on_the_config_alone(tmp_path):
    cfg = apply_overrides(TrainConfig(), {"algo.kl_coef": 0.1, "optim.grad_clip": 1.0, "offpolicy.epochs": 2,
                                          "offpolicy.rollout_dtype": "bfloat16"})
    (tmp_path / "config.json").write_text(cfg.to_json())  # a run dir without rows
    res = audit_run(tmp_path)
    assert res.failed == ["on_policy", "mismatch", "no_regularizers"]
    assert "algo.kl_coef=0.1" in res.item("no_regularizers").measured
    assert res.item("truncation").passed is None  # nothing to measure: n/a, not a failure
    assert res.item("on_policy").source == "config"


def test_graders_are_exact_on_their_check_sets():
    for task in ("addition", "sum_list"):
        right, n = grader_accuracy(task)
        assert right == n > 0


def test_a_directory_that_is_not_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("solidrl audit: error:") and "\n" not in err


def test_probe_check_gets_a_note_when_the_baseline_arm_fails(runs):
    from solidrl.probes.audit import audit_arm

    record = [{"arm": "baseline", "dir": "stale", "seed": 0}, {"arm": "treatment", "dir": "default", "seed": 0},
              {"arm": "baseline", "dir": "missing", "seed": 1}]  # a run that left no directory is skipped
    res = audit_arm(runs, record, "baseline")
    assert list(res["runs"]) == ["stale"] and res["failed"] == ["no_staleness"]
    assert res["note"].startswith("baseline arm 'baseline' fails the perfect-baseline audit (no_staleness)")
    assert audit_arm(runs, [{"arm": "baseline", "dir": "default", "seed": 0}], "baseline")["note"] is None

"""probe-check end to end on the nano model: tiny runs (8 prompts x 4 samples, 3 steps, 2 seeds).

What is checked: the exit code and report.json's shape (every prediction carries a verdict and the
numbers behind it), the plots, the counterfactual shadow (same batch as the baseline step, every
step), `--from-run` giving the same verdicts as the live run, and a run that fails mid-way keeping
its directory and being named in the report.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from solidrl.probes.check import judge
from solidrl.probes.commands import check
from solidrl.trainer.loop import Trainer, TrainingError

from conftest import read_rows

TINY = """
name = "tiny"
claim = "RLOO's advantages are GRPO's without the 1/std: a smaller gradient, same batch."
derivation = "binary rewards: sum_i A_i^2 = G for GRPO and G^2/(G-1)^2 * G p (1 - p) for RLOO"
expected = "test fixture"
[run]
steps = 3
seeds = [0, 1]
cold_start = "shared"   # one cold start for both seeds: one SFT for the suite (per-seed: tests/test_check_judge.py)
prompts_per_step = 8
group_size = 4
[run.quick]
steps = 2
seeds = [0]
[baseline]
algo.advantage = "grpo"
[treatment]
algo.advantage = "rloo"
[[predict]]
label = "grad norm, counterfactual"
kind = "counterfactual"
metric = "grad/norm"
compare = "direction"
direction = "decrease"
[[predict]]
label = "grad norm, A/B"
kind = "ab"
metric = "grad/norm"
compare = "ratio"
value = 0.6
tolerance = 0.25
[[predict]]
label = "accuracy, A/B (a null effect in 3 steps)"
kind = "ab"
metric = "reward/accuracy"
stat = "final"
resample = "seeds"
compare = "difference"
value = 0.0
tolerance = 0.5
[[predict]]
label = "entropy change per step"
kind = "per_step"
metric = "entropy/delta"
predictor = "cov_entropy"
min_sign_agreement = 0.5
[[predict]]
label = "entropy trajectory"
kind = "trajectory"
metric = "entropy/delta"
predictor = "cov_entropy"
observed = "entropy/token_mean"
ratio = [0.0, 1.0]
[[predict]]
label = "update norm from fresh moments"
kind = "counterfactual"
metric = "update/norm"
compare = "ratio"
value = 1.0
tolerance = 0.5
shadow_optimizer = "fresh"
"""
LABELS = ["grad norm, counterfactual", "grad norm, A/B", "accuracy, A/B (a null effect in 3 steps)",
          "entropy change per step", "entropy trajectory", "update norm from fresh moments"]


def _strip(report: dict) -> list[dict]:
    return [{k: v for k, v in p.items() if k != "plot"} for p in report["predictions"]]


@pytest.fixture(scope="module")
def live(tmp_path_factory, solidrl_cache):
    """One live probe-check run, shared by the tests below and, under pytest-xdist, by all workers
    (the base temp dir's parent is common to them; a file lock makes the first worker run it)."""
    import os

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this session's folder, common to its workers (never an earlier session's)
    d = root / "probe_check_live"
    d.mkdir(exist_ok=True)
    hyp, out, done = d / "tiny.toml", d / "out", d / "exit_code"
    with FileLock(str(d) + ".lock"):
        if not done.exists():
            hyp.write_text(TINY)
            done.write_text(str(check.main([str(hyp), "--out", str(out), "--quiet"])))
    return int(done.read_text()), out, hyp


def test_live_run_writes_a_report_with_a_verdict_per_prediction(live):
    code, out, _ = live
    assert code in (0, 1)
    rep = json.loads((out / "report.json").read_text())
    assert rep["exit_code"] == code
    assert [p["label"] for p in rep["predictions"]] == LABELS
    for p in rep["predictions"]:
        assert p["verdict"] in ("confirmed", "refuted", "inconclusive")
        assert p["criteria"] and p["criteria"][0]["value"] is not None
        assert (out / p["plot"]).exists()
    assert rep["predictions"][3]["n"]["pairs"] == 6    # 2 seeds x 3 steps
    assert {(r["arm"], r["seed"], r["status"]) for r in rep["runs"]} == {
        ("baseline", 0, "finished"), ("baseline", 1, "finished"), ("treatment", 0, "finished"),
        ("treatment", 1, "finished")}
    for r in rep["runs"]:
        assert len(read_rows(Path(r["abs_dir"]))) == 3
    assert (out / "report.md").read_text().startswith("# probe-check: tiny")
    # The paired interval of the accuracy difference lies in [-1, 1] and contains the point value.
    c = rep["predictions"][2]["criteria"][0]
    assert -1 <= c["interval"][0] <= c["value"] <= c["interval"][1] <= 1


def test_counterfactual_shadow_takes_every_step_on_the_same_batch(live):
    _, out, _ = live
    for seed in (0, 1):
        base = read_rows(out / "runs" / "baseline" / f"seed{seed}")
        shadow = read_rows(out / "runs" / "baseline" / f"seed{seed}" / "cf-treatment")
        assert [r["step"] for r in shadow] == [0, 1, 2]
        assert all(r["counterfactual/batch_match"] == 1.0 for r in shadow)
        # Same batch, same grader, no reward shaping: rewards agree exactly; the updates differ.
        assert [r["reward/accuracy"] for r in shadow] == [r["reward/accuracy"] for r in base]
        assert all(s["grad/norm"] != b["grad/norm"] for s, b in zip(shadow, base))
    # The shadow never moves the baseline: its trajectory equals the plain treatment-free run's.
    assert not (out / "runs" / "treatment" / "seed0" / "cf-baseline").exists()
    # shadow_optimizer = "fresh": both sides are shadows from zero moments on the baseline's batch; a
    # fresh AdamW step moves each weight with a gradient by ~lr, more than the continued step does after step 0
    for seed in (0, 1):
        run = out / "runs" / "baseline" / f"seed{seed}"
        base, fb, ft = (read_rows(run), read_rows(run / "cf-baseline-fresh"), read_rows(run / "cf-treatment-fresh"))
        assert all(r["counterfactual/batch_match"] == 1.0 for r in fb + ft) and len(fb) == len(ft) == 3
        assert fb[0]["update/norm"] == pytest.approx(base[0]["update/norm"], rel=1e-6)  # step 0: both fresh
        assert all(f["update/norm"] > b["update/norm"] for f, b in zip(fb[1:], base[1:]))


def test_from_run_gives_the_live_verdicts(live, tmp_path):
    code, out, hyp = live
    again = tmp_path / "rejudged"
    assert check.main(["--from-run", str(out), "--out", str(again), "--quiet", "--no-plots"]) == code
    a = json.loads((out / "report.json").read_text())
    b = json.loads((again / "report.json").read_text())
    assert _strip(a) == _strip(b)
    # the hypothesis copy in the run folder is used when no file is given; an edited arm is refused
    edited = tmp_path / "edited.toml"
    edited.write_text(TINY.replace('algo.advantage = "rloo"', 'algo.advantage = "dr_grpo"'))
    assert check.main(["--from-run", str(out), str(edited), "--out", str(tmp_path / "x"), "--quiet"]) == 2


def test_a_run_that_fails_midway_is_kept_and_named(tmp_path, monkeypatch, solidrl_cache, capsys):
    real = Trainer.train_step

    def flaky(self, step):
        if self.cfg.algo.advantage == "rloo" and step == 1:
            raise TrainingError("step 1: non-finite loss (NaN/Inf) (injected by the test)")
        return real(self, step)

    monkeypatch.setattr(Trainer, "train_step", flaky)
    hyp = tmp_path / "h.toml"
    hyp.write_text(TINY.split("[[predict]]")[0] + "[[predict]]" + TINY.split("[[predict]]")[2])
    out = tmp_path / "out"
    assert check.main([str(hyp), "--quick", "--out", str(out), "--quiet", "--no-plots"]) == 1
    rep = json.loads((out / "report.json").read_text())
    assert rep["failed_runs"] == ["runs/treatment/seed0"]
    failed = next(r for r in rep["runs"] if r["arm"] == "treatment")
    assert failed["status"] == "failed" and "injected" in failed["reason"]
    assert len(read_rows(out / "runs" / "treatment" / "seed0")) == 1   # step 0 kept
    p = rep["predictions"][0]
    assert p["verdict"] == "inconclusive" and any("runs/treatment/seed0" in n for n in p["notes"])
    assert "run failed" in capsys.readouterr().out


def test_predictor_outputs_are_recomputed_from_stats_when_rows_lack_them(live, tmp_path):
    import shutil

    from solidrl.probes.check import hypothesis as H

    _, out, hyp_file = live
    hyp = H.load(hyp_file)
    record = json.loads((out / "plan.json").read_text())
    run = out / "runs" / "baseline" / "seed0"
    key = "pred/cov_entropy/entropy/delta"
    copy_dir = tmp_path / "run"
    shutil.copytree(run, copy_dir)
    rows = [{k: v for k, v in r.items() if not k.startswith("pred/")} for r in read_rows(run)]
    (copy_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = judge.RunData(hyp, out, record)
    p = hyp.predictions[3]
    np.testing.assert_allclose(data.predicted(copy_dir, p, key), data.predicted(run, p, key), rtol=1e-12)


def test_unknown_metric_stops_at_the_first_step_and_lists_the_known(tmp_path, solidrl_cache, capsys):
    hyp = tmp_path / "h.toml"
    hyp.write_text(TINY.split("[[predict]]")[0].replace("steps = 3", "steps = 2")
                   + '[[predict]]\nkind = "ab"\nmetric = "entropy/nonexistent"\ncompare = "direction"\n'
                   + 'direction = "increase"\n')
    assert check.main([str(hyp), "--quick", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "field 'predict[0].metric': unknown metric 'entropy/nonexistent'" in err
    assert "known: " in err and "entropy/token_mean" in err

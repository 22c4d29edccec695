"""probe-check end to end on the nano model: tiny runs (8 prompts x 4 samples, 3 steps, 2 seeds).

What is checked: report.json's numbers (each prediction's observed value recomputed here from the
run rows, its verdict from its interval, the exit code from the verdicts), the plots, the baseline's
audit measuring every item (probe-check runs carry the full probe set), the counterfactual shadow
(same batch as the baseline step, every step, and the baseline's rows equal to a run without the
shadow), `--from-run` giving the same verdicts as the live run, a run that fails mid-way keeping its
directory and being named in the report, and the two metric checks (the glossary when the file is
parsed; the rows at step 0).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from solidrl.probes.check import judge
from solidrl.probes.commands import check
from solidrl.probes.probeset import attach_probes
from solidrl.trainer.config import config_from_dict
from solidrl.trainer.loop import Trainer, TrainingError

from conftest import read_rows, strip_time

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


def _series(run_dir: Path, key: str, steps: int = 3) -> np.ndarray:
    """[steps] values of `key` by step from the rows (NaN where a row lacks it): written here, not rundir's."""
    x = np.full(steps, np.nan)
    for r in read_rows(run_dir):
        if key in r:
            x[r["step"]] = r[key]
    return x


def _verdict_of(lo: float, hi: float, a, b) -> str:
    """The interval rule of docs/probe-check.md: inside the allowed interval confirms, disjoint refutes."""
    a = -np.inf if a is None else a
    b = np.inf if b is None else b
    return "confirmed" if a <= lo and hi <= b else "refuted" if hi < a or lo > b else "inconclusive"


def test_live_run_writes_a_report_with_a_verdict_per_prediction(live):
    code, out, _ = live
    rep = json.loads((out / "report.json").read_text())
    assert rep["exit_code"] == code
    assert [p["label"] for p in rep["predictions"]] == LABELS
    for p in rep["predictions"]:
        c = p["criteria"][0]
        assert c["interval"][0] <= c["value"] <= c["interval"][1] or p["kind"] == "trajectory"
        assert p["verdict"] == c["verdict"] == _verdict_of(*c["interval"], *c["allowed"])
        assert (out / p["plot"]).exists()
    # the exit code: 0 only when every prediction is confirmed (and no run failed)
    assert code == (0 if all(p["verdict"] == "confirmed" for p in rep["predictions"]) else 1)
    # Each observed value recomputed from the run rows, independently of judge.py / verdict.py.
    runs = out / "runs"
    B = [runs / "baseline" / f"seed{s}" for s in (0, 1)]
    T = [runs / "treatment" / f"seed{s}" for s in (0, 1)]
    pr = rep["predictions"]
    shadow = np.array([_series(b / "cf-treatment", "grad/norm") for b in B])
    base = np.array([_series(b, "grad/norm") for b in B])
    np.testing.assert_allclose(pr[0]["criteria"][0]["value"], shadow.mean() - base.mean(), rtol=1e-12)
    treat = np.array([_series(t, "grad/norm") for t in T])
    np.testing.assert_allclose(pr[1]["criteria"][0]["value"], treat.mean() / base.mean(), rtol=1e-12)
    acc_b = [_series(b, "reward/accuracy")[-1] for b in B]
    acc_t = [_series(t, "reward/accuracy")[-1] for t in T]
    np.testing.assert_allclose(pr[2]["criteria"][0]["value"], np.mean(acc_t) - np.mean(acc_b), atol=1e-12)
    pred = np.concatenate([_series(b, "pred/cov_entropy/entropy/delta") for b in B])
    obs = np.concatenate([_series(b, "entropy/delta") for b in B])
    assert np.isfinite(pred).all() and np.isfinite(obs).all()
    assert pr[3]["criteria"][0]["value"] == pytest.approx(np.mean(np.sign(pred) == np.sign(obs)), abs=1e-12)
    # trajectory: mean predicted one-step change over the mean per-seed least-squares slope of the observed
    slope = np.mean([np.polyfit(np.arange(3.0), _series(b, "entropy/token_mean"), 1)[0] for b in B])
    np.testing.assert_allclose(pr[4]["criteria"][0]["value"], pred.mean() / slope, rtol=1e-9)
    # probe-check's runs carry the whole `solidrl train` probe set: the baseline's audit measures every item
    items = {i["name"]: i for i in rep["audit"]["runs"]["runs/baseline/seed0"]["items"]}
    assert items["loss_terms"]["source"] == "measured" and items["consistency"]["source"] == "measured"
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


def test_counterfactual_shadow_takes_every_step_on_the_same_batch(live, tmp_path):
    _, out, _ = live
    for seed in (0, 1):
        base = read_rows(out / "runs" / "baseline" / f"seed{seed}")
        shadow = read_rows(out / "runs" / "baseline" / f"seed{seed}" / "cf-treatment")
        assert [r["step"] for r in shadow] == [0, 1, 2]
        assert all(r["counterfactual/batch_match"] == 1.0 for r in shadow)
        # Same batch, same grader, no reward shaping: rewards agree exactly; the updates differ.
        assert [r["reward/accuracy"] for r in shadow] == [r["reward/accuracy"] for r in base]
        assert all(s["grad/norm"] != b["grad/norm"] for s, b in zip(shadow, base))
    assert not (out / "runs" / "treatment" / "seed0" / "cf-baseline").exists()  # only the pair's baseline shadows
    # The shadow never moves the baseline: its rows equal those of the same config run without a shadow.
    d = out / "runs" / "baseline" / "seed0"
    cfg = config_from_dict(json.loads((d / "config.json").read_text()))
    t = Trainer(cfg, tmp_path / "alone", progress=False)
    attach_probes(t)
    assert t.run()["status"] == "finished"
    assert strip_time(read_rows(tmp_path / "alone")) == strip_time(read_rows(d))
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


def test_unknown_metric_stops_before_any_run_with_the_close_matches(tmp_path, capsys):
    hyp = tmp_path / "h.toml"
    hyp.write_text(TINY.split("[[predict]]")[0].replace("steps = 3", "steps = 2")
                   + '[[predict]]\nkind = "ab"\nmetric = "entropy/tokem_mean"\ncompare = "direction"\n'
                   + 'direction = "increase"\n')
    assert check.main([str(hyp), "--quick", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "field 'predict[0].metric': unknown metric 'entropy/tokem_mean'" in err
    assert "close matches: entropy/token_mean" in err
    assert not (tmp_path / "out" / "runs").exists()  # refused when parsed: no cold start, no run


def test_a_glossary_metric_the_probe_set_lacks_stops_at_step_0_and_marks_the_run_failed(tmp_path, solidrl_cache,
                                                                                        capsys):
    """The step-0 check (the second line of defence): kl/ref_exact is in the glossary, but probes.groups
    leaves the ref group out; the run stops at step 0, exit 2, and its status.json says failed, not running."""
    hyp = tmp_path / "h.toml"
    hyp.write_text(TINY.split("[[predict]]")[0].replace("steps = 3", "steps = 2")
                   .replace("[baseline]", '[baseline]\nprobes.groups = "entropy"')
                   + '[[predict]]\nkind = "ab"\nmetric = "kl/ref_exact"\ncompare = "direction"\n'
                   + 'direction = "increase"\n')
    assert check.main([str(hyp), "--quick", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "metric 'kl/ref_exact' is not in the rows of arm 'baseline'" in err and "entropy/token_mean" in err
    st = json.loads((tmp_path / "out" / "runs" / "baseline" / "seed0" / "status.json").read_text())
    assert st["status"] == "failed" and st["step"] == 0 and "kl/ref_exact" in st["reason"]

"""probes.check.judge on synthetic run directories whose right answer is known (no training).

Checked: judging is pure (entries carry no plot arrays, the plot data come back beside them, and
judging twice gives the same result); a predicted value computed from the same runs is paired with
the observation, so an exact identity is confirmed; compare = "per_step" on a counterfactual pair;
severity (a constant with no rival, a rival not refuted, a predictor with skill); the verdict per
cold start and the `unstable` mark; the report's verdict text.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from solidrl.probes.check import hypothesis as H
from solidrl.probes.check import report
from solidrl.probes.check.judge import judge_all

STEPS, SEEDS = 12, (0, 1, 2)
PRED = "pred/grpo_gradnorm_ratio/grad/norm_ratio_vs_rloo"
DIFF_PRED = "pred/cov_entropy/entropy/delta_diff"

HYP = f"""
name = "synthetic"
claim = "a synthetic check"
[run]
steps = {STEPS}
seeds = [0, 1, 2]
[baseline]
algo.advantage = "rloo"
[treatment]
algo.advantage = "grpo"
[[predict]]
label = "identity"
kind = "counterfactual"
metric = "grad/norm"
compare = "ratio"
predictor = "grpo_gradnorm_ratio"
output = "grad/norm_ratio_vs_rloo"
tolerance = 0.05
[[predict]]
label = "constant"
kind = "counterfactual"
metric = "grad/norm"
compare = "ratio"
value = 1.9
tolerance = 0.15
[[predict]]
label = "constant with a rival"
kind = "counterfactual"
metric = "grad/norm"
compare = "ratio"
value = 1.9
tolerance = 0.15
rivals = [{{label = "flat 2", value = 2.0}}, {{label = "far", value = 5.0}}]
[[predict]]
label = "difference per step"
kind = "counterfactual"
metric = "entropy/delta"
compare = "per_step"
predictor = "cov_entropy"
output = "entropy/delta_diff"
min_r = 0.9
[[predict]]
label = "entropy higher"
kind = "ab"
metric = "entropy/token_mean"
compare = "direction"
direction = "increase"
"""


def _write(d: Path, rows: list[dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def runs(tmp_path):
    """3 seeds on 3 cold starts. Per step the treatment's grad norm is exactly pred_t x the baseline's
    (pred_t varies around 1.9); the entropy difference per step is predicted with small noise; the A/B
    entropy effect is +0.1 on cold starts 0 and 1 and -0.1 on cold start 2."""
    g = np.random.default_rng(0)
    out = tmp_path / "out"
    record = {"hypothesis": "synthetic", "mode": "default", "steps": STEPS, "seeds": list(SEEDS),
              "overrides": {}, "cold_start": "per_seed", "runs": []}
    for s in SEEDS:
        ratio = 1.9 + 0.05 * g.standard_normal(STEPS)
        gb = 1.0 + 0.3 * g.random(STEPS)
        dh_b = 0.01 * g.standard_normal(STEPS)
        diff = 0.002 * g.standard_normal(STEPS)
        ent = 1.0 + 0.01 * g.standard_normal(STEPS)
        eff = 0.1 if s < 2 else -0.1
        base = [{"step": k, "grad/norm": gb[k], "entropy/delta": dh_b[k], "entropy/token_mean": ent[k],
                 PRED: ratio[k], DIFF_PRED: diff[k] * (1 + 0.02 * g.standard_normal())} for k in range(STEPS)]
        cf = [{"step": k, "grad/norm": ratio[k] * gb[k], "entropy/delta": dh_b[k] + diff[k],
               "counterfactual/batch_match": 1.0} for k in range(STEPS)]
        treat = [{"step": k, "entropy/token_mean": ent[k] + eff + 0.01 * g.standard_normal()} for k in range(STEPS)]
        _write(out / "runs" / "baseline" / f"seed{s}", base)
        _write(out / "runs" / "baseline" / f"seed{s}" / "cf-treatment", cf)
        _write(out / "runs" / "treatment" / f"seed{s}", treat)
        for arm in ("baseline", "treatment"):
            record["runs"].append({"arm": arm, "seed": s, "dir": f"runs/{arm}/seed{s}", "status": "finished",
                                   "reason": None, "counterfactual": [], "cold_start": s})
    return H.parse(HYP), out, record


def test_judging_is_pure_and_returns_plot_data_beside_the_entries(runs):
    hyp, out, record = runs
    before = copy.deepcopy(record)
    a = judge_all(hyp, out, record)
    b = judge_all(hyp, out, record)
    assert record == before
    assert all("_plot" not in e for e in a["predictions"])
    assert set(a["plot_data"]) == {0, 1, 2, 3, 4}
    assert a["plot_data"][3]["type"] == "scatter" and len(a["plot_data"][3]["predicted"]) == STEPS * 3
    assert json.dumps(a["predictions"], sort_keys=True) == json.dumps(b["predictions"], sort_keys=True)
    assert a["method"]["confidence"] == 0.9 and a["method"]["default_interval"] == "seed_t"


def test_a_predicted_value_from_the_same_runs_is_paired_so_an_identity_is_confirmed(runs):
    hyp, out, record = runs
    e = judge_all(hyp, out, record)["predictions"][0]
    # treatment_t = pred_t x baseline_t on every step: observed - predicted is a zero-width interval
    # around 0 up to the ratio-of-means vs mean-of-ratios difference (|.| < 0.01 here), well inside +-0.05
    assert e["verdict"] == "confirmed", e
    c = e["criteria"][0]
    assert abs(c["value"] - e["predictor_value"]) < 0.01
    assert c["interval"][1] - c["interval"][0] < 0.02
    assert e["skill"]["value"] == pytest.approx(1.0) and e["skill"]["says_nothing_beyond_average"] is False
    assert e["severe"] is True, e["severity_reason"]


def test_a_constant_without_a_rival_is_confirmed_but_not_severe(runs):
    hyp, out, record = runs
    preds = judge_all(hyp, out, record)["predictions"]
    const, rival = preds[1], preds[2]
    assert const["verdict"] == "confirmed" and const["severe"] is False
    assert "no named rival" in const["severity_reason"]
    assert report.verdict_text(const) == "confirmed, not severe"
    # a rival at 2.0 +- 0.15 overlaps the interval around 1.9: not refuted, so not severe; 5.0 is refuted
    assert rival["verdict"] == "confirmed" and rival["severe"] is False
    assert "'flat 2'" in rival["severity_reason"]
    assert [r["label"] for r in rival["rivals"]] == ["flat 2", "far"]


def test_per_step_difference_against_its_predictor(runs):
    hyp, out, record = runs
    e = judge_all(hyp, out, record)["predictions"][3]
    assert e["verdict"] == "confirmed", e
    assert e["criteria"][0]["name"] == "r" and e["criteria"][0]["value"] > 0.99
    assert e["severe"] is None and e["skill"]["value"] > 0.9


def test_verdict_per_cold_start_and_unstable(runs):
    hyp, out, record = runs
    res = judge_all(hyp, out, record)
    e = res["predictions"][4]
    assert [x["cold_start"] for x in e["by_cold_start"]] == [0, 1, 2]
    assert [x["verdict"] for x in e["by_cold_start"]] == ["confirmed", "confirmed", "refuted"]
    assert e["unstable"] is True
    assert report.verdict_text(e).endswith(", unstable")
    assert res["predictions"][0]["unstable"] is False
    md = report.markdown({**res, "predictions": res["predictions"]})
    assert "**unstable** across cold starts" in md and "not severe" in md


def test_a_record_without_cold_starts_has_no_per_cold_start_verdicts(runs):
    hyp, out, record = runs
    for r in record["runs"]:
        del r["cold_start"]
    e = judge_all(hyp, out, record)["predictions"][4]
    assert "by_cold_start" not in e and "unstable" not in e


def test_a_pretrained_model_path_run_has_no_cold_start_and_says_so(runs):
    """model.path runs start from the given weights whatever sft.seed is (probes/check/run.py records
    cold_start None): no per-cold-start verdicts, no unstable flag, and the entry says why."""
    hyp, out, record = runs
    for r in record["runs"]:
        r["cold_start"], r["pretrained"] = None, "smollm2-135m"
    e = judge_all(hyp, out, record)["predictions"][4]
    assert "by_cold_start" not in e and "unstable" not in e
    assert "pretrained weights (smollm2-135m)" in e["start"] and "not checked across starting points" in e["start"]
    assert "pretrained weights (smollm2-135m)" in report.markdown(judge_all(hyp, out, record))


def test_report_write_keeps_plot_data_out_of_report_json(runs, tmp_path):
    hyp, out, record = runs
    res = judge_all(hyp, out, record)
    clean = report.write(res, tmp_path, plots=False)
    assert "plot_data" not in clean and "plot_data" in res
    data = json.loads((tmp_path / "report.json").read_text())
    assert all(k in data["predictions"][0] for k in ("severe", "severity_reason", "skill"))


def test_a_rival_predictor_the_runs_lack_has_no_value_and_blocks_severity(runs):
    hyp, out, record = runs
    text = HYP.replace('rivals = [{label = "flat 2", value = 2.0}, {label = "far", value = 5.0}]',
                       'rivals = [{label = "absent", predictor = "cov_entropy", output = "entropy/nowhere"}]')
    e = judge_all(H.parse(text), out, record)["predictions"][2]
    assert e["verdict"] == "confirmed" and e["severe"] is False
    assert e["rivals"] == [{"label": "absent", "value": None}] and "no value" in e["severity_reason"]

"""`solidrl ladder`: the plan pairs fixes only with the ratio they act on; a tiny ladder writes its table,
plots and summaries, with the stale rung's log-ratio variance above the baseline's and predictions beside it."""
import json

import pytest

from conftest import tiny_overrides
from solidrl.probes.commands.ladder import FIXES, QUICK, RUNGS, build_plan, format_table, run_ladder
from solidrl.trainer.config import ConfigError


def test_fixes_run_only_on_the_rungs_whose_ratio_they_act_on():
    plan = build_plan(rungs=["baseline", "staleness=2", "epochs=2"], fix_on=["staleness=2", "epochs=2"],
                      fixes=["tis", "ppo_clip"], seeds=[0], steps=2)
    # tis reweighs by pi_old/pi_rollout (moved by staleness); ppo_clip clips pi/pi_old (moved by reuse)
    assert plan.pairs() == [("baseline", "none"), ("staleness=2", "none"), ("epochs=2", "none"),
                            ("staleness=2", "tis"), ("epochs=2", "ppo_clip")]
    cfg = plan.config("staleness=2", "tis", 3)
    assert cfg["offpolicy.staleness"] == 2 and cfg["offpolicy.correction"] == "tis" and cfg["run.seed"] == 3
    assert cfg["run.collapse_reward_floor"] > 0  # the ladder's runs detect collapse


def test_the_quick_plan_is_valid_and_names_are_checked():
    plan = build_plan(quick=True)
    # 9 rungs; staleness=4 and noise=1.0 with the 4 corrections, epochs=4 with the 3 losses: 17 before issue 19,
    # plus geo_rs on the two rollout-ratio rungs and cispo on reuse
    assert plan.rungs == QUICK["rungs"] and len(plan.pairs()) == 20
    assert set(RUNGS) >= set(plan.rungs) and plan.fixes == QUICK["fixes"] and set(plan.fixes) < set(FIXES)
    with pytest.raises(ConfigError, match="unknown ladder rung 'staleness=3'"):
        build_plan(rungs=["staleness=3"])
    with pytest.raises(ConfigError, match="not among the ladder's rungs"):
        build_plan(rungs=["baseline"], fix_on=["bf16"])


NEW_CORRECTIONS = ("tis_two_sided", "seq_tis", "geo_rs")
NEW_LOSSES = ("cispo", "sapo", "gmpo", "dppo_tv", "dppo_kl", "clip_cov", "kl_cov", "ppo_clip_opsm")


def test_the_full_plan_runs_issue19s_corrections_on_rollout_rungs_and_losses_on_reuse():
    from solidrl.theory.predictors import PREDICTORS

    plan = build_plan()
    pairs = plan.pairs()
    for f in ("tis", "icepop", "masked_seq_is", *NEW_CORRECTIONS):
        on = {r for r, x in pairs if x == f}
        assert on == {r for r in plan.fix_on if RUNGS[r].family in ("staleness", "partial", "mismatch")}, f
        # each correction's touched fraction has a registered predictor compiled from its derivation
        assert FIXES[f].predictor == f and PREDICTORS.get(f).derivation.__name__ == f"derive_{f}"
    for f in ("ppo_clip", "seq_ratio", *NEW_LOSSES):
        assert {r for r, x in pairs if x == f} == {"epochs=4", "minibatches=4"}, f
        assert FIXES[f].predictor is None
    assert len(pairs) == len(plan.rungs) + 6 * 6 + 2 * 10


def test_the_table_puts_predicted_touched_fraction_beside_the_observed_one():
    row = {"rung": "staleness=4", "fix": "geo_rs", "collapse_steps": [None], "collapse_kinds": [None], "seeds": 1,
           "failed": 0, "final_acc": 0.5, "kl_step": 1e-3, "clip_obs": 0.01, "clip_pred": 0.02, "logvar_obs": 0.1,
           "logvar_pred": 0.08, "logvar_pred_coherent": 0.2, "loss_clip": 0.0, "touched_obs": 0.125, "touched_pred": 0.0625}
    assert format_table([row]).splitlines()[-1].endswith("| 0.125 / 0.0625 |")
    assert format_table([{**row, "touched_pred": None}]).splitlines()[-1].endswith("| 0.125 / – |")


def test_a_tiny_ladder_writes_table_plots_and_growing_ratio_variance(tmp_path):
    plan = build_plan(rungs=["baseline", "staleness=2"], fix_on=["staleness=2"], fixes=["tis", "geo_rs"], seeds=[0],
                      steps=3, overrides=tiny_overrides())
    res = run_ladder(plan, tmp_path, progress=False)
    table = {(r["rung"], r["fix"]): r for r in res["table"]}
    assert list(table) == [("baseline", "none"), ("staleness=2", "none"), ("staleness=2", "tis"), ("staleness=2", "geo_rs")]
    for fix in ("tis", "geo_rs"):  # observed and predicted touched fractions, both from the run's own rows
        r = table[("staleness=2", fix)]
        assert 0 <= r["touched_obs"] <= 1 and 0 < r["touched_pred"] < 1, (fix, r)
        assert f"| staleness=2 | {fix} |" in format_table(res["table"])
    base, stale, fixed = table[("baseline", "none")], table[("staleness=2", "none")], table[("staleness=2", "tis")]
    assert base["logvar_obs"] < 1e-9 and stale["logvar_obs"] > 1e-3  # Var log(pi_train / pi_rollout)
    assert base["logvar_pred"] == 0 and 0 < stale["logvar_pred"] <= stale["logvar_pred_coherent"]
    assert stale["clip_pred"] is not None and stale["kl_step"] > 0 and stale["collapse_steps"] == [None]
    assert fixed["touched_obs"] is not None and base["touched_obs"] is None
    md = (tmp_path / "ladder.md").read_text()
    assert format_table(res["table"]) in md and "| staleness=2 | tis |" in md
    assert {"plots/staleness.png", "plots/fix_staleness=2.png", "plots/summary.png"} <= set(res["plots"])
    assert all((tmp_path / p).stat().st_size > 0 for p in res["plots"])
    saved = json.loads((tmp_path / "ladder.json").read_text())
    assert saved["wall_s"] > 0 and len(saved["runs"]) == 4
    # a second call reuses the finished runs instead of training again
    again = run_ladder(plan, tmp_path, progress=False)
    assert all(r["reused"] for r in again["runs"]) and again["table"] == res["table"]

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
    assert plan.rungs == QUICK["rungs"] and len(plan.pairs()) == 17
    assert set(RUNGS) >= set(plan.rungs) and set(plan.fixes) == set(FIXES)
    with pytest.raises(ConfigError, match="unknown ladder rung 'staleness=3'"):
        build_plan(rungs=["staleness=3"])
    with pytest.raises(ConfigError, match="not among the ladder's rungs"):
        build_plan(rungs=["baseline"], fix_on=["bf16"])


def test_a_tiny_ladder_writes_table_plots_and_growing_ratio_variance(tmp_path):
    plan = build_plan(rungs=["baseline", "staleness=2"], fix_on=["staleness=2"], fixes=["tis"], seeds=[0], steps=3,
                      overrides=tiny_overrides())
    res = run_ladder(plan, tmp_path, progress=False)
    table = {(r["rung"], r["fix"]): r for r in res["table"]}
    assert list(table) == [("baseline", "none"), ("staleness=2", "none"), ("staleness=2", "tis")]
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
    assert saved["wall_s"] > 0 and len(saved["runs"]) == 3
    # a second call reuses the finished runs instead of training again
    again = run_ladder(plan, tmp_path, progress=False)
    assert all(r["reused"] for r in again["runs"]) and again["table"] == res["table"]

"""Collapse detection: the detector's criteria on synthetic rows, and clean stops of real runs that keep
every row written before (an injected NaN, a synthetic reward crash)."""
import json
import math

import torch

from conftest import read_rows, tiny_overrides
from solidrl.trainer.collapse import CollapseDetector
from solidrl.trainer.config import RunConfig, TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer


def feed(det, rows):
    for i, r in enumerate(rows):
        hit = det.check({"step": i, **r})
        if hit:
            return i, hit
    return None


def test_reward_floor_needs_patience_consecutive_steps_and_a_recovery_resets_it():
    det = CollapseDetector(RunConfig(collapse_reward_floor=0.1, collapse_patience=3), vocab_size=16)
    r = [0.5, 0.0, 0.0, 0.3, 0.0, 0.05, 0.0, 0.9]
    step, (kind, reason) = feed(det, [{"reward/mean": x} for x in r])
    assert (step, kind) == (6, "reward") and "3 steps" in reason  # steps 4, 5, 6; step 3 reset the streak


def test_entropy_explodes_towards_log_v_or_vanishes():
    v = 16  # log 16 = 2.77 nats; 0.9 of it = 2.50
    hi = CollapseDetector(RunConfig(collapse_entropy_high=0.9, collapse_patience=2), v)
    step, (kind, _) = feed(hi, [{"entropy/token_mean": h} for h in (0.5, 2.6, 0.4, 2.6, 2.7)])
    assert (step, kind) == (4, "entropy_high")
    lo = CollapseDetector(RunConfig(collapse_entropy_low=1e-3, collapse_patience=1), v)
    step, (kind, _) = feed(lo, [{"entropy/token_mean": h} for h in (0.5, 0.01, 1e-4)])
    assert (step, kind) == (2, "entropy_low")
    # without the probes' key the fallback is asked for, and only then
    asked = []
    lo2 = CollapseDetector(RunConfig(collapse_entropy_low=1e-3, collapse_patience=1), v)
    assert lo2.check({"step": 0}, entropy=lambda: asked.append(1) or 1e-5)[0] == "entropy_low" and asked == [1]
    assert CollapseDetector(RunConfig(), v).check({"step": 0}, entropy=lambda: asked.append(2) or 0.0) is None
    assert asked == [1]


def test_kl_step_jump_by_orders_of_magnitude_against_the_median_of_earlier_steps():
    det = CollapseDetector(RunConfig(collapse_kl_jump=100), 16)
    # step 4: 0.9 vs the median 0.015 of the four earlier = 60x (no); step 5: 5.0 vs the median 0.02 of five = 250x
    kls = [0.01, 0.02, 0.5, 0.01, 0.9, 5.0]
    step, (kind, reason) = feed(det, [{"kl/step": k} for k in kls])
    assert (step, kind) == (5, "kl_jump") and "250x the median 0.02 of the 5 earlier" in reason
    early = CollapseDetector(RunConfig(collapse_kl_jump=100), 16)
    assert feed(early, [{"kl/step": k} for k in (1e-6, 1.0, 1.0)]) is None  # fewer than 3 earlier steps


def test_non_finite_core_metrics_always_collapse():
    det = CollapseDetector(RunConfig(), 16)
    assert det.check({"step": 0, "reward/mean": 0.5, "ratio/max": math.inf}) is None  # not a core metric
    kind, reason = det.check({"step": 1, "kl/step": math.nan})
    assert kind == "nan" and "kl/step" in reason


def cfg_of(**over):
    return apply_overrides(TrainConfig(), tiny_overrides(**{"probes.enabled": False, **over}))


def test_injected_nan_stops_cleanly_keeping_rows_and_the_last_good_checkpoint(tmp_path):
    t = Trainer(cfg_of(**{"run.steps": 5, "run.checkpoint_every": 1}), tmp_path, progress=False)

    def poison(ctx):
        if ctx.step == 1:
            with torch.no_grad():
                next(ctx.model.parameters()).fill_(float("nan"))

    t.add_hook("step_end", poison)
    status = t.run()
    assert status["status"] == "collapsed" and status["kind"] == "nan" and status["step"] == 2
    assert json.loads((tmp_path / "status.json").read_text()) == status
    rows = read_rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[-1]["collapse/kind"] == "nan"
    assert all("reward/mean" in r for r in rows[:2])
    ckpt = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)
    # the poisoned weights (after step 1) were not checkpointed: the one after step 0 stays
    assert ckpt["step"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_synthetic_reward_crash_collapses_after_patience_steps(tmp_path):
    t = Trainer(cfg_of(**{"run.steps": 8, "run.collapse_reward_floor": 0.1, "run.collapse_patience": 2}),
                tmp_path, progress=False)

    def crash(ctx):
        if ctx.step >= 2:
            ctx.metrics["reward/mean"] = 0.0

    t.add_hook("step_end", crash)
    status = t.run()
    assert (status["status"], status["kind"], status["step"]) == ("collapsed", "reward", 3)
    rows = read_rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[3]["collapse/kind"] == "reward" and rows[3]["collapse/reason"] == status["reason"]
    assert "collapse/reason" not in rows[2] and rows[0]["reward/mean"] > 0.1

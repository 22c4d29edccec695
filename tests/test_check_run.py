"""probes.check.run's shadow: the counterfactual step continues the baseline's AdamW moments, or
(shadow_optimizer = "fresh") starts from zero moments, whose first step is lr * g / (|g| + eps)."""
from __future__ import annotations

import math

import pytest
import torch

from solidrl.probes.check.run import Shadow
from solidrl.trainer.config import TrainConfig, apply_overrides
from solidrl.trainer.loop import StepFrom, Trainer

from conftest import tiny_overrides


def test_continue_copies_the_moments_and_a_fresh_step_moves_each_weight_by_about_lr(tmp_path, solidrl_cache):
    cfg = apply_overrides(TrainConfig(), tiny_overrides())
    base = Trainer(cfg, tmp_path / "base", progress=False)
    base.train_step(0)

    # continue: the step starts from a copy of the baseline's moments; fresh: from none
    want, got = base.optimizer.state_dict()["state"], StepFrom.of(base).optimizer["state"]
    assert want.keys() == got.keys() and len(want) > 0
    assert all(torch.equal(want[k]["exp_avg"], got[k]["exp_avg"]) for k in want)
    assert StepFrom.of(base, optimizer=False).optimizer is None

    fresh = Shadow(base, cfg, tmp_path / "fresh", every=1, fresh_optimizer=True)
    fresh.step(1)
    # From zero moments AdamW's bias-corrected step is lr * g / (|g| + eps) per element (weight decay 0),
    # so ||dtheta|| / lr = sqrt(sum_i (|g_i| / (|g_i| + eps))^2), computed here from the shadow's gradients.
    eps = fresh.t.optimizer.param_groups[0]["eps"]   # torch's AdamW default, 1e-8
    norm = math.sqrt(sum(float(((p.grad.abs() / (p.grad.abs() + eps)) ** 2).sum())
                         for p in fresh.t.model.parameters() if p.grad is not None))
    assert fresh.row["update/norm_over_lr"] == pytest.approx(norm, rel=1e-3)
    # a counterfactual step builds its own optimizer: the shadow trainer's optimizer never moves
    assert len(fresh.t.optimizer.state) == 0
    fresh.close("finished")

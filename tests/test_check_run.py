"""probes.check.run's shadow: the counterfactual step continues the baseline's AdamW moments, or
(shadow_optimizer = "fresh") starts from zero moments, whose first step is lr * g / (|g| + eps)."""
from __future__ import annotations

import math

import pytest
import torch

from solidrl.probes.check.run import Shadow
from solidrl.trainer.config import TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer

from conftest import tiny_overrides


def _base(tmp_path):
    cfg = apply_overrides(TrainConfig(), tiny_overrides())
    base = Trainer(cfg, tmp_path / "base", progress=False)
    base.train_step(0)
    return cfg, base


def test_continue_copies_the_moments_and_fresh_starts_from_zero(tmp_path, solidrl_cache):
    cfg, base = _base(tmp_path)
    cont = Shadow(base, cfg, tmp_path / "cont", every=1)
    cont._sync()
    want = base.optimizer.state_dict()["state"]
    got = cont.t.optimizer.state_dict()["state"]
    assert want.keys() == got.keys() and len(want) > 0
    assert all(torch.equal(want[k]["exp_avg"], got[k]["exp_avg"]) for k in want)

    fresh = Shadow(base, cfg, tmp_path / "fresh", every=1, fresh_optimizer=True)
    fresh.step(1)                 # the shadow's own step leaves moments behind ...
    assert len(fresh.t.optimizer.state) > 0
    fresh._sync()                 # ... which the next sync drops
    assert len(fresh.t.optimizer.state) == 0
    cont.close("finished")
    fresh.close("finished")


def test_a_fresh_adamw_step_moves_every_weight_with_a_gradient_by_about_lr(tmp_path, solidrl_cache):
    # From zero moments AdamW's bias-corrected step is lr * g / (|g| + eps) per element (weight decay 0),
    # so ||dtheta|| / lr = sqrt(sum_i (|g_i| / (|g_i| + eps))^2), computed here from the shadow's gradients.
    cfg, base = _base(tmp_path)
    fresh = Shadow(base, cfg, tmp_path / "fresh", every=1, fresh_optimizer=True)
    fresh.step(1)
    eps = fresh.t.optimizer.param_groups[0]["eps"]   # torch's AdamW default, 1e-8
    want = math.sqrt(sum(float(((p.grad.abs() / (p.grad.abs() + eps)) ** 2).sum())
                         for p in fresh.t.model.parameters() if p.grad is not None))
    assert fresh.row["update/norm_over_lr"] == pytest.approx(want, rel=1e-3)
    fresh.close("finished")


"""trainer/controllers.py: the update rules against hand computations, the coefficient each step runs
with (logged as controller/*, seen by the loss), checkpoint + resume, config.json and the audit."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import read_rows, strip_time, tiny_overrides
from solidrl.trainer import controllers as C
from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer, train

KL = {"algo.controller": "adaptive_kl", "algo.kl_coef": 0.05, "algo.controller_target": 1e-4,
      "algo.controller_horizon": 64.0, "probes.enabled": False}
ENT = {"algo.controller": "adaptive_entropy", "algo.controller_target": 5.0, "probes.enabled": False}


def cfg_of(**over):
    return apply_overrides(TrainConfig(), tiny_overrides(**over))


def fake_ctx(cfg, S=8, R=4, V=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (S, R), generator=g)
    mask = (torch.arange(R)[None, :] < torch.randint(1, R + 1, (S, 1), generator=g)).float()
    old, ref = torch.randn(S, R, V, generator=g), torch.randn(S, R, V, generator=g)
    old_logp = torch.log_softmax(old, -1).gather(-1, ids[..., None])[..., 0]
    ro = SimpleNamespace(response_ids=ids, response_mask=mask)
    return SimpleNamespace(cfg=cfg, rollout=ro, old_logits=old, ref_logits=ref, old_logp=old_logp, mask=mask,
                           problems=[None] * S)


def kl_by_hand(ctx) -> float:
    """mean_i (1/|o_i|) sum_t k3_it, in float64 with loops."""
    lp, lr = torch.log_softmax(ctx.old_logits.double(), -1), torch.log_softmax(ctx.ref_logits.double(), -1)
    per_seq = []
    for i in range(lp.shape[0]):
        ks = []
        for t in range(lp.shape[1]):
            if ctx.mask[i, t] > 0:
                a = int(ctx.rollout.response_ids[i, t])
                d = float(lp[i, t, a] - lr[i, t, a])
                ks.append(math.exp(-d) - 1 + d)
        per_seq.append(sum(ks) / len(ks))
    return sum(per_seq) / len(per_seq)


@pytest.mark.parametrize("target", [1e-6, None, 1e3])  # error clipped at +0.2, inside, clipped at -0.2
def test_adaptive_kl_update_is_verls_rule(target):
    cfg = apply_overrides(TrainConfig(), {**KL, "algo.kl_estimator": "k3"})
    ctx = fake_ctx(cfg)
    kl = kl_by_hand(ctx)
    target = kl * 1.1 if target is None else target
    c = C.AdaptiveKL(cfg, target=target, horizon=64.0)
    assert C.batch_kl(ctx) == pytest.approx(kl, rel=1e-6)
    c.update(ctx)
    err = min(max(kl / target - 1, -0.2), 0.2)
    assert c.value == pytest.approx(0.05 * (1 + err * 8 / 64.0), rel=1e-7)  # the KL is float32 (~1e-7 relative)
    assert abs(err) == pytest.approx(0.2) or target == kl * 1.1


def test_adaptive_entropy_steps_by_delta_toward_the_target_within_its_bounds():
    cfg = apply_overrides(TrainConfig(), ENT)
    ctx = fake_ctx(cfg)
    p = torch.softmax(ctx.old_logits.double(), -1)
    h = float((-(p * p.log()).sum(-1))[ctx.mask > 0].mean())
    assert C.batch_entropy(ctx) == pytest.approx(h, rel=1e-6)
    up = C.AdaptiveEntropy(cfg, target=h + 1, delta=0.004, max_coef=0.01)
    for want in (0.004, 0.008, 0.01, 0.01):  # below the target: up by delta, capped at max_coef
        up.update(ctx)
        assert up.value == pytest.approx(want)
    down = C.AdaptiveEntropy(cfg, target=h - 1, delta=0.004, max_coef=0.01)
    down.update(ctx)
    assert down.value == 0.0  # above the target: down, never below 0


def test_bad_controller_settings_give_one_line(tmp_path):
    for over, what in (({**KL, "algo.kl_coef": 0.0}, "algo.kl_coef > 0"),
                       ({**KL, "algo.controller_target": 0.0}, "controller_target > 0"),
                       ({**ENT, "algo.controller_target": 0.0}, "controller_target > 0")):
        with pytest.raises(ConfigError, match=what) as e:
            Trainer(cfg_of(**over), tmp_path, progress=False)
        assert "\n" not in str(e.value)


def test_the_loop_runs_each_step_with_the_controlled_coefficient_and_logs_it(tmp_path):
    seen = []

    def hook(ctx):  # the coefficient the loss used, and the KL the next value must follow from
        seen.append((ctx.cfg.algo.kl_coef, kl_by_hand(ctx)))

    cfg = cfg_of(**{**KL, "run.steps": 3})
    train(cfg, tmp_path, progress=False, setup=lambda t: t.add_hook("after_rollout", hook))
    rows = read_rows(tmp_path)
    coefs = [r["controller/kl_coef"] for r in rows]
    assert coefs[0] == 0.05 and [c for c, _ in seen] == coefs and all("loss/kl" in r for r in rows)
    S = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    for k in range(2):
        err = min(max(seen[k][1] / 1e-4 - 1, -0.2), 0.2)
        assert coefs[k + 1] == pytest.approx(coefs[k] * (1 + err * S / 64.0), rel=1e-6)
    assert coefs[-1] != coefs[0]
    assert json.loads((tmp_path / "config.json").read_text())["algo"]["controller"] == "adaptive_kl"


def test_resume_with_a_controller_equals_the_straight_run(tmp_path):
    full = read_rows(train(cfg_of(**{**ENT, "run.steps": 3}), tmp_path / "full", progress=False).out)
    part = tmp_path / "part"
    train(cfg_of(**{**ENT, "run.steps": 2}), part, progress=False)
    st = torch.load(part / "checkpoint" / "state.pt", weights_only=True)  # plain numbers: readable safely
    assert st["controller"] == {"value": pytest.approx(full[2]["controller/entropy_coef"])}
    t = Trainer(cfg_of(**{**ENT, "run.steps": 3}), part, progress=False, resume=True)
    t.run()
    rows = read_rows(part)
    assert strip_time(rows) == strip_time(full)
    assert len({r["controller/entropy_coef"] for r in full}) > 1  # the coefficient really moved


def test_the_audit_sees_a_controlled_coefficient_the_config_calls_zero(tmp_path):
    from solidrl.probes.audit import audit_run

    train(cfg_of(**{**ENT, "run.steps": 2}), tmp_path, progress=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["algo"]["entropy_coef"] == 0.0  # the start; the rows hold what the steps used
    item = next(i for i in audit_run(tmp_path).items if i.name == "no_regularizers")
    assert not item.passed and "entropy_coef up to 0.001 (controller adaptive_entropy)" in item.measured

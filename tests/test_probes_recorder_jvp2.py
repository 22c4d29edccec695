"""The recorder's jvp2 probe (probes.jvp2_every) on a tiny nano run.

Claims: on a jvp2 step the stats carry jvp2_dH, jvp2_kl, jvp2_kl_reverse beside jvp_cov / jvp_var, the row
carries pred/jvp2/*, and at the trainer's default lr (3e-4, AdamW) jvp2 is within 5% of the observed
entropy/delta (5%) and kl/step (10%: step 0 of this 8 x 4 batch moves kl/step by 0.10 nats, where the
missing third-order logit term shows, measured 5.4%) and closer than the first-order jvp; with jvp2_every = 0 and
jvp_every = 0 no jvp key is written.
"""
from __future__ import annotations

import torch

from conftest import read_rows, tiny_overrides
from solidrl.probes import recorder as R
from solidrl.trainer.config import TrainConfig, apply_overrides
from solidrl.trainer.loop import train


def test_jvp2_probe_writes_its_stats_and_predicts_the_step(tmp_path):
    cfg = apply_overrides(TrainConfig(), tiny_overrides(**{"run.steps": 2, "probes.jvp2_every": 1}))
    train(cfg, tmp_path, progress=False, setup=R.attach)
    rows = read_rows(tmp_path)
    st = torch.load(tmp_path / "stats" / "step_000001.pt", weights_only=True)
    assert {"jvp_cov", "jvp_var", "jvp2_dH", "jvp2_kl", "jvp2_kl_reverse"} <= set(st)
    assert st["jvp2_kl"].shape == st["logp"].shape and (st["jvp2_kl"] >= 0).all()
    for r in rows:
        for m in ("entropy/delta", "kl/step", "kl/step_reverse"):
            obs, p2 = r[m], r[f"pred/jvp2/{m}"]
            tol = 0.05 if m == "entropy/delta" else 0.10
            assert abs(p2 - obs) < tol * abs(obs), (r["step"], m, obs, p2)
        for m in ("entropy/delta", "kl/step"):
            assert abs(r[f"pred/jvp2/{m}"] - r[m]) <= abs(r[f"pred/jvp/{m}"] - r[m]), (r["step"], m)


def test_no_jvp_keys_when_both_knobs_are_off(tmp_path):
    cfg = apply_overrides(TrainConfig(), tiny_overrides(**{"run.steps": 1}))
    train(cfg, tmp_path, progress=False, setup=R.attach)
    assert not any(k.startswith("pred/jvp") for k in read_rows(tmp_path)[0])
    assert "jvp2_kl" not in torch.load(tmp_path / "stats" / "step_000000.pt", weights_only=True)

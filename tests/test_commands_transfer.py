"""The transfer table end to end on nano and micro (tiny N, small batches), and its scoring arithmetic."""
from __future__ import annotations

import json

import numpy as np
import pytest

from solidrl.probes.commands.transfer import score


def test_score_worked_example():
    # obs 1, 2, 4; pred 1.1, 1.8, 4 -> rel. errors 0.1, 0.1, 0 (median 0.1); all signs agree.
    # Residuals |obs - pred| at eta: 0.1, 0.2, 0.0; at eta/2: 0.025, 0.05, 0.01 -> ratios 4, 4, 0 -> median 4.
    p = {"pred": np.array([1.1, 1.8, 4.0]), "obs": np.array([1.0, 2.0, 4.0]),
         "pred_half": np.array([0.525, 0.95, 2.01]), "obs_half": np.array([0.5, 1.0, 2.0]),
         "noise": np.array([0.0, 1e-9, 0.0])}
    s = score(p)
    assert s["median_rel_error"] == pytest.approx(0.1)
    assert s["sign_agreement"] == 1.0
    assert s["residual_ratio"] == pytest.approx(4.0)
    assert s["pearson_r"] == pytest.approx(np.corrcoef(p["pred"], p["obs"])[0, 1])
    assert s["noise_floor"] == 0.0 and s["median_abs_obs"] == 2.0


def test_score_residual_order_over_eta_half_quarter():
    """Residuals 0.08 -> 0.01 -> 0.00125 (x1/8 per halving): order 3 at both halvings (a second-order
    predictor's k + 1); a residual of 0 at a level leaves that batch out of the median."""
    obs = np.array([1.0, 2.0, 3.0])
    p = {"obs": obs, "pred": obs + [0.08, 0.16, 0.0], "obs_half": obs / 2, "pred_half": obs / 2 + [0.01, 0.02, 0.01],
         "obs_quarter": obs / 4, "pred_quarter": obs / 4 + [0.00125, 0.0025, 0.001], "noise": np.zeros(3)}
    s = score(p)
    assert s["residual_order"] == pytest.approx(3.0) and s["residual_order_quarter"] == pytest.approx(3.0)
    assert score({k: v for k, v in p.items() if "quarter" not in k})["residual_order_quarter"] is None


def test_score_leaves_out_what_is_not_computable():
    # Two batches: no Pearson r; an observed 0 has no relative error; no eta/2 arm, no residual ratio.
    s = score({"pred": np.array([0.1, -0.2]), "obs": np.array([0.0, 0.1]), "noise": np.array([np.nan, np.nan])})
    assert s["pearson_r"] is None and s["residual_ratio"] is None and s["noise_floor"] is None
    assert s["median_rel_error"] == pytest.approx(3.0) and s["sign_agreement"] == 0.0


def test_transfer_command_end_to_end_on_nano_and_micro(tmp_path, capsys):
    from solidrl.probes.commands.cli import main

    out = tmp_path / "tr"
    rc = main(["transfer", "--models", "nano,micro", "--n", "3", "--out", str(out), "--quiet",
               "--set", "rollout.prompts_per_step=8", "--set", "rollout.group_size=4"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert [m["model"] for m in rep["models"]] == ["nano", "micro"]
    assert all(m["same_batch_all_arms"] and m["n"] == 3 and m["batch"] == "8 x 4" for m in rep["models"])
    rows = {(r["model"], r["predictor"], r["metric"]): r for r in rep["rows"]}
    for model in ("nano", "micro"):
        # the JVP's first-order KL is the predictor that must transfer; the fresh-AdamW step is big
        # enough that every observed change sits far above the (exactly zero, CPU) noise floor
        kl = rows[(model, "jvp", "kl/step")]["score"]
        assert kl["n"] == 3 and kl["median_rel_error"] < 0.5 and kl["sign_agreement"] == 1.0
        assert kl["median_abs_obs"] > 10 * kl["noise_floor"]
        assert (model, "jvp", "entropy/delta") in rows and (model, "tabular_sgd", "entropy/delta") in rows
        # the second-order predictor: run at eta, eta/2 and eta/4, and closer than the first order on KL
        k2 = rows[(model, "jvp2", "kl/step")]
        assert len(k2["obs_quarter"]) == 3 and k2["score"]["median_rel_error"] <= kl["median_rel_error"]
        assert k2["score"]["residual_order_quarter"] is not None
        # the third order: closer still on KL (measured on nano at lr 3e-4: jvp2 2.9%, jvp3 0.3%)
        k3 = rows[(model, "jvp3", "kl/step")]["score"]
        assert k3["median_rel_error"] <= k2["score"]["median_rel_error"]
        gr = rows.get((model, "grpo_gradnorm_ratio", "grad/norm_ratio_vs_rloo"))
        if gr is not None:  # present when some group is mixed
            assert gr["score"]["residual_ratio"] is None and all(o > 0 for o in gr["obs"])
        # eta and eta/2 of the same batch: the eta/2 change is smaller
        h = rows[(model, "jvp", "kl/step")]
        assert all(b < a for a, b in zip(h["obs"], h["obs_half"]))
    # the residual's decomposition: one batch's shares add up to 1, recomputed here from the rows
    dec = {(d["model"], d["metric"]): d["shares"] for d in rep["decomposition"]}
    assert set(dec) == {(m, k) for m in ("nano", "micro") for k in ("entropy/delta", "kl/step")}
    for (model, metric), shares in dec.items():
        r = {p: np.array(rows[(model, p, metric)]["pred"]) for p in ("jvp", "jvp1s", "jvp2", "jvp3")}
        obs = np.array(rows[(model, "jvp", metric)]["obs"])
        assert shares["first order"] == pytest.approx(float(np.median(r["jvp"] / obs)))
        assert shares["logit curvature"] == pytest.approx(float(np.median((r["jvp2"] - r["jvp1s"]) / obs)))
        assert shares["rest"] == pytest.approx(float(np.median((obs - r["jvp3"]) / obs)))
    table = (out / "table.md").read_text()
    assert "## The residual's decomposition" in table and "| nano | kl/step |" in table
    assert "| nano | jvp | kl/step |" in table and "| micro | jvp | entropy/delta |" in table
    assert "| nano | jvp2 | kl/step |" in table and "(4) |" in table  # jvp2's KL: k + 1 = 4
    assert "solidrl transfer" in table
    assert {p.split("/")[-1] for p in rep["plots"]} >= {"jvp__kl_step.png", "jvp__entropy_delta.png"}
    assert "| nano | jvp | kl/step |" in capsys.readouterr().out


def test_calibrated_lr_hits_the_target_of_a_quadratic_kl():
    from solidrl.probes.commands.transfer import calibrated_lr
    from solidrl.trainer.config import ConfigError

    # kl(eta) = c eta^2 with c = 5e5: at eta0 = 3e-4, kl = 0.045; the target 0.01 needs eta = sqrt(0.01 / c)
    c, eta0 = 5e5, 3e-4
    eta = calibrated_lr(eta0, c * eta0 ** 2, 0.01)
    assert eta == pytest.approx((0.01 / c) ** 0.5, rel=1e-12) and c * eta ** 2 == pytest.approx(0.01)
    for bad in (0.0, float("nan"), -1.0):
        with pytest.raises(ConfigError, match="--target-kl 0"):
            calibrated_lr(eta0, bad, 0.01)


def test_symlog_ticks_keep_labels_apart_and_cover_the_data():
    """Ticks: 0, then decades >= the linear threshold on each side the data reach (none inside (0, thr),
    where the default symlog ticks crowd 0 and their labels overlap)."""
    from solidrl.probes.commands.transfer import _symlog_ticks

    assert _symlog_ticks(5.75e-4, -0.088, 0.0019) == [-0.1, -0.01, -0.001, 0.0, 0.001, 0.01]
    assert _symlog_ticks(1e-3, 0.0, 0.5) == [0.0, 0.001, 0.01, 0.1, 1.0]   # nothing below 0: no negative ticks
    for t in _symlog_ticks(3e-5, -2e-2, 7e-3):
        assert t == 0 or abs(t) >= 3e-5

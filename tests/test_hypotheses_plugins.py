"""The shipped hypotheses' plugin predictors (hypotheses/plugins/pass_at_k.py, token_weight.py), each against an
independent computation: the trainer's own estimator on a batch, and a Monte Carlo of the norm model."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from solidrl.theory.predictors import PREDICTORS
from solidrl.trainer import algos, plugins

PLUGINS = Path(__file__).resolve().parents[1] / "hypotheses" / "plugins"


@pytest.fixture(autouse=True)
def _unload():
    plugins.unload_all()
    yield
    plugins.unload_all()


@pytest.mark.parametrize("name", ["pass_at_k", "token_weight"])
def test_derivation_residuals_vanish(name):
    plugins.load(PLUGINS / f"{name}.py")
    pred = PREDICTORS.get(f"{name}_gradnorm_ratio")
    assert all(pred.derivation().verify().values())


@pytest.mark.parametrize("k", [1, 2, 4])
def test_pass_at_k_predictor_matches_the_trainers_advantages(k):
    """Exact on every batch: the closed form vs sum of squares of trainer.algos.pass_at_k and rloo."""
    plugins.load(PLUGINS / "pass_at_k.py")
    G = 8
    counts = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 3, 7])  # every success count, some twice
    rewards = (torch.arange(G).unsqueeze(0) < counts.unsqueeze(1)).double()
    rewards = rewards[:, torch.randperm(G, generator=torch.Generator().manual_seed(k))]  # order must not matter
    stats = {"reward": rewards.reshape(-1), "group_index": torch.arange(len(counts)).repeat_interleave(G)}
    out = PREDICTORS.get("pass_at_k_gradnorm_ratio")(stats, k=k)
    a_pk, a_rloo = algos.pass_at_k(rewards, k=k), algos.rloo(rewards)
    assert out["grad/norm_ratio_vs_rloo"] == pytest.approx(float((a_pk**2).sum().sqrt() / (a_rloo**2).sum().sqrt()),
                                                           rel=1e-9)
    zero_pk = (a_pk == 0).all(1).double().mean().item()
    zero_rloo = (a_rloo == 0).all(1).double().mean().item()
    assert out["adv/zero_frac_pass_at_k"] == pytest.approx(zero_pk, abs=1e-12)
    assert out["adv/zero_frac_delta_vs_rloo"] == pytest.approx(zero_pk - zero_rloo, abs=1e-12)
    if k == 1:  # pass@1 is GRPO: the ratio is hypotheses/01's
        assert out["grad/norm_ratio_vs_rloo"] == pytest.approx(
            PREDICTORS.get("grpo_gradnorm_ratio")({**stats, "grpo_std_eps": torch.tensor(1e-6)})[
                "grad/norm_ratio_vs_rloo"], rel=1e-6)


def test_token_weight_predictor_against_a_monte_carlo_of_its_model():
    """E||sum_t w_t c_t xi_t||^2 / E||sum_t c_t xi_t||^2 by sampling iid score vectors xi_t (tolerance 3%:
    relative sd of a norm ratio from 4000 x 64 Gaussians is about 1/sqrt(2 * 4000 * 64) ~ 0.1%, per side)."""
    plugins.load(PLUGINS / "token_weight.py")
    g = torch.Generator().manual_seed(0)
    N = 60
    coef = torch.randn(N, generator=g, dtype=torch.float64)
    pos = torch.arange(N) % 7
    ids = torch.randint(0, 5, (N,), generator=g)
    xi = torch.randn(4000, N, 64, generator=g, dtype=torch.float64)
    pred = PREDICTORS.get("token_weight_gradnorm_ratio")
    for kw, w in [({"start": 0, "end": 2, "weight": 3.0}, torch.where(pos < 2, 3.0, 1.0)),
                  ({"start": 4, "end": 0, "weight": 0.5}, torch.where(pos >= 4, 0.5, 1.0)),
                  ({"token_id": 2, "weight": 2.0}, torch.where(ids == 2, 2.0, 1.0))]:
        out = pred({"coef": coef, "position": pos, "token_id": ids}, **kw)
        gw = torch.einsum("t,mtd->md", w.double() * coef, xi)
        g0 = torch.einsum("t,mtd->md", coef, xi)
        mc = math.sqrt(float((gw**2).sum() / (g0**2).sum()))
        assert out["grad/norm_ratio_vs_unweighted"] == pytest.approx(mc, rel=0.03)
        assert out["adv/weighted_token_frac"] == pytest.approx(float((w != 1.0).double().mean()))

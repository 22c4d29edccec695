"""Loss-term audit: the closed forms match autograd of the registries; a run passes; a cut bonus fails by name."""
import itertools

import pytest
import torch

from conftest import read_rows, tiny_overrides
from solidrl.probes import audit as A
from solidrl.probes import loss_audit as LA
from solidrl.probes.audit import audit_run
from solidrl.probes.commands.cli import main
from solidrl.trainer import algos

F64 = torch.float64


def _batch(seed=0, B=6, T=5, V=7):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, V, generator=g, dtype=F64) * 2
    ref = z + 0.5 * torch.randn(B, T, V, generator=g, dtype=F64)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) < 0.8).to(F64)
    mask[0] = 0.0  # an empty row
    adv = torch.randn(B, 1, generator=g, dtype=F64).expand(B, T)
    old = torch.log_softmax(z, -1).gather(-1, ids[..., None])[..., 0] + 0.3 * torch.randn(B, T, generator=g, dtype=F64)
    w = torch.rand(B, T, generator=g, dtype=F64) + 0.5
    return z, ref, ids, mask, adv, old, w


def _autograd(fn, z):
    leaf = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(leaf), leaf)
    return g


AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


@pytest.mark.parametrize("loss,agg", list(itertools.product(["vanilla", "ppo_clip", "dual_clip", "seq_ratio"], AGGS)))
def test_pg_closed_form_matches_autograd_of_the_registry(loss, agg):
    z, _, ids, mask, adv, old, w = _batch()
    p = algos.PolicyLossParams(0.2, 0.28, 3.0)

    def L(leaf):
        logp = algos.gather_logprobs(leaf, ids)
        return algos.AGGREGATIONS.get(agg)(algos.POLICY_LOSSES.get(loss)(logp, old, adv, mask, p) * w, mask, 5.0)

    pred = LA.pred_pg(z, ids, old, adv, mask, w, agg, 5.0, loss, 0.2, 0.28, 3.0)
    assert LA.compare(_autograd(L, z), pred)["rel_err"] < 1e-12


@pytest.mark.parametrize("est,agg", list(itertools.product(["k1", "k2", "k3", "exact"], AGGS)))
def test_kl_closed_form_matches_autograd_of_the_registry(est, agg):
    z, ref, ids, mask, *_ = _batch(1)

    def L(leaf):
        lp, lr = torch.log_softmax(leaf, -1), torch.log_softmax(ref, -1)
        k = algos.KL_ESTIMATORS.get(est)(lp.gather(-1, ids[..., None])[..., 0], lr.gather(-1, ids[..., None])[..., 0],
                                          lp, lr)
        return 0.3 * algos.AGGREGATIONS.get(agg)(k, mask, 5.0)

    assert LA.compare(_autograd(L, z), LA.pred_kl(z, ids, ref, mask, agg, 5.0, est, 0.3))["rel_err"] < 1e-12


def test_k2_gradient_is_delta_times_grad_logp():
    # k2 = delta^2/2 with delta = log pi(a) - log pi_ref(a): d/dlog pi = delta. Worked example: delta = 0.5 -> 0.5
    lp, lr = torch.tensor([-1.0], dtype=F64), torch.tensor([-1.5], dtype=F64)
    assert LA.kl_logp_coef("k2", lp, lr).item() == 0.5
    assert LA.kl_logp_coef("k3", lp, lr).item() == pytest.approx(1 - torch.exp(torch.tensor(-0.5)).item())


@pytest.mark.parametrize("agg", AGGS)
def test_entropy_bonus_closed_form_is_minus_beta_pi_times_logpi_plus_h(agg):
    z, _, _, mask, *_ = _batch(2)
    L = lambda leaf: -0.01 * algos.AGGREGATIONS.get(agg)(algos.entropy_from_logits(leaf), mask, 5.0)  # noqa: E731
    assert LA.compare(_autograd(L, z), LA.pred_entropy_bonus(z, mask, agg, 5.0, 0.01))["rel_err"] < 1e-12


def test_verdicts_name_zero_sign_and_magnitude():
    assert A._loss_verdict(1.0, None, 0.0, 1.0) == "zero contribution"
    assert A._loss_verdict(2.0, -1.0, 1.0, 1.0) == "wrong sign"
    assert A._loss_verdict(1.0, 1.0, 2.0, 1.0) == "wrong magnitude"


# ---- end to end: solidrl train + solidrl audit -------------------------------------------------

def _train(out, **over):
    sets = [x for k, v in tiny_overrides(**{"run.steps": 2, "probes.audit_every": 1, **over}).items() for x in ("--set", f"{k}={v}")]
    assert main(["train", "--quiet", "--out", str(out), *sets]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("loss_audit")
    _train(d / "default")
    light = {"probes.groups": "adv,loss_terms", "probes.save_stats": "false"}  # only the probes read here
    _train(d / "bonus", **light, **{"algo.entropy_coef": 0.01, "algo.kl_coef": 0.05, "algo.kl_estimator": "k2"})
    mp = pytest.MonkeyPatch()
    orig = algos.entropy_from_logits
    mp.setattr(algos, "entropy_from_logits", lambda logits: orig(logits).detach())  # the TRL #5595 bug
    try:
        _train(d / "cut", **light, **{"algo.entropy_coef": 0.01, "run.steps": 1})
    finally:
        mp.undo()
    return d


def test_default_run_audits_every_term_and_passes(runs):
    res = audit_run(runs / "default")
    lt, cons = res.item("loss_terms"), res.item("consistency")
    assert lt.passed and cons.passed, res.format()
    assert "pg: rel_err" in lt.measured
    rows = read_rows(runs / "default")
    for r in rows:  # every probed row carries the new keys
        assert r["loss_audit/pg/rel_err"] < 1e-5
        assert r["loss_audit/total/param_rel_err"] < 1e-5
        assert r["consistency/logp_abs_max"] <= LA.CONSISTENCY_TOL
        assert {"adv/zero_frac_all_correct", "adv/zero_frac_all_wrong", "adv/zero_frac_truncated"} <= r.keys()
        split = r["adv/zero_frac_all_correct"] + r["adv/zero_frac_all_wrong"] + r["adv/zero_frac_truncated"]
        assert split == pytest.approx(r["adv/zero_frac"])  # binary rewards: the split is a partition


def test_kl_and_entropy_terms_match_their_formulas(runs):
    rows = read_rows(runs / "bonus")
    for r in rows:
        for term in ("pg", "kl", "entropy_bonus"):
            assert r[f"loss_audit/{term}/rel_err"] < 1e-4, (term, r[f"loss_audit/{term}/rel_err"])
    assert rows[-1]["loss_audit/entropy_bonus/param_grad_norm"] > 0
    assert rows[-1]["loss_audit/kl/grad_norm"] > 0  # step 1: pi moved off pi_ref
    lt = audit_run(runs / "bonus").item("loss_terms")
    assert lt.passed and "entropy_bonus" in lt.measured and "kl: rel_err" in lt.measured


def test_a_bonus_without_gradient_fails_the_audit_naming_the_term(runs, capsys):
    res = audit_run(runs / "cut")
    lt = res.item("loss_terms")
    assert lt.passed is False and "FAILED: entropy_bonus" in lt.measured
    assert "entropy_bonus" in lt.measured and "zero contribution" in lt.measured
    rows = read_rows(runs / "cut")
    assert all(r["loss_audit/entropy_bonus/grad_norm"] == 0 and r["loss_audit/entropy_bonus/rel_err"] == 1.0
               for r in rows)
    assert main(["audit", str(runs / "cut")]) == 1
    assert "entropy_bonus" in capsys.readouterr().out

"""Peer parity: solidrl.trainer.algos against the installed verl 0.9.1 (`verl.trainer.ppo.core_algos`,
`rollout_corr_helper`), on random tensors in float64 and float32 with padding, empty rows, singleton and
all-equal groups and huge log-ratios. Where the formulas agree the test asserts equality; where they do not
it asserts the documented difference (docs/peers.md gives each one with its conversion).

verl is a test dependency, not an optional one: CI installs the `[peers]` extra and `verl==0.9.1 --no-deps`
(scripts/install.sh). A missing verl fails this module loudly instead of skipping it.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import verl
        import verl.trainer.ppo.core_algos as ca
        import verl.trainer.ppo.rollout_corr_helper as rch
        from verl.trainer.config import AlgoConfig
        from verl.workers.config import ActorConfig
        from verl.workers.config.actor import PolicyLossConfig
except ImportError as exc:  # a clear message, never a skip
    raise ImportError(
        "tests/test_trainer_algos_vs_verl.py needs verl 0.9.1 and its import-time deps: run scripts/install.sh, or "
        "`pip install -e '.[dev,peers]' && pip install --no-deps verl==0.9.1`") from exc

from solidrl.trainer.algos import (
    ADVANTAGES,
    AGGREGATIONS,
    CORRECTIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    CorrectionParams,
    PolicyLossParams,
)

DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: dict(rtol=2e-8, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}  # float64 rtol: verl divides row sums by n_b + 1e-8


def test_the_installed_verl_is_the_audited_version():
    assert verl.__version__ == "0.9.1", f"docs/peers.md audits verl 0.9.1; installed {verl.__version__}"
    assert sorted(ca.POLICY_LOSS_REGISTRY) == ["bypass_mode", "cispo", "clip_cov", "dppo_kl", "dppo_tv", "dro",
                                               "geo_mean", "gpg", "gspo", "kl_cov", "sapo", "vanilla"]
    assert sorted(str(k) for k in ca.ADV_ESTIMATOR_REGISTRY) == sorted([
        "gae", "grpo", "grpo_vectorized", "gdpo", "grpo_passk", "reinforce_plus_plus_baseline", "rloo", "opo",
        "reinforce_plus_plus", "remax", "gpg", "rloo_vectorized", "optimal_token_baseline",
        "tir_optimal_token_baseline"])


def close(a, b, dtype, **kw):
    tol = dict(TOL[dtype])
    tol.update(kw)
    as64 = lambda x: x.double() if torch.is_tensor(x) else torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(as64(a), as64(b), **tol)


def batch(dtype, seed=0, B=6, T=7, scale=0.3, empty_row=True):
    """(logp, old_logp, adv[B,T], mask) with padded rows of random length, one empty row, per-sequence A."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
    old = logp + scale * torch.randn(B, T, generator=g, dtype=torch.float64)
    old = old.clamp(max=-1e-3)  # a log-probability
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T).contiguous()
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    if empty_row:
        lengths[2] = 0
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    return [x.to(dtype) for x in (logp, old, adv, mask)]


def actor(eps_low=0.2, eps_high=0.2, c=3.0, **loss_kw):
    return ActorConfig(strategy="fsdp", rollout_n=4, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=4,
                       use_dynamic_bsz=False, clip_ratio=eps_low, clip_ratio_low=eps_low, clip_ratio_high=eps_high,
                       clip_ratio_c=c, policy_loss=PolicyLossConfig(**loss_kw))


def verl_loss(name, logp, old, adv, mask, agg, cfg):
    lp = logp.clone().requires_grad_()
    loss, _ = ca.get_policy_loss_fn(name)(old, lp, adv, mask, agg, cfg)
    (g,) = torch.autograd.grad(loss, lp)
    return loss.detach(), g


def our_loss(name, logp, old, adv, mask, agg, p, norm_const=None, agg_kw=None, **kw):
    lp = logp.clone().requires_grad_()
    tok = POLICY_LOSSES.get(name)(lp, old, adv, mask, p, **kw)
    loss = AGGREGATIONS.get(agg)(tok, mask, float(norm_const or mask.shape[1]), **(agg_kw or {}))
    (g,) = torch.autograd.grad(loss, lp)
    return loss.detach(), g


# verl's seq-mean aggregations leave empty rows out: the parity runs use empty_rows="skip" for them.
SKIP = {"seq-mean-token-mean": {"empty_rows": "skip"}, "seq-mean-token-sum": {"empty_rows": "skip"},
        "token-mean": {}}


# ---------------------------------------------------------------------------------------------
# Policy losses
# ---------------------------------------------------------------------------------------------

# verl name -> (solidrl name, solidrl keyword parameters, verl policy_loss kwargs)
SAME_FORMULA = {
    "vanilla": ("dual_clip", {}, {}),            # verl's vanilla always applies the dual clip (clip_ratio_c)
    "gpg": ("vanilla", {}, {}),
    "cispo": ("cispo", {"bounds": "two_sided"}, {}),
    "dro": ("dro", {"beta": 0.07}, {"dro_beta": 0.07}),
    "dppo_tv": ("dppo_tv", {"trunc_c": 3.0}, {}),   # verl reads actor.clip_ratio_c, whose default is 3 (not 20)
    "dppo_kl": ("dppo_kl", {"trunc_c": 3.0}, {}),
    "kl_cov": ("kl_cov", {"ratio": 0.1, "kl_coef": 0.3}, {"kl_cov_ratio": 0.1, "ppo_kl_coef": 0.3}),
    "gspo": ("seq_ratio", {}, {}),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("verl_name", sorted(SAME_FORMULA))
def test_same_formula_losses_match_value_and_gradient(verl_name, agg, dtype):
    ours, kw, loss_kw = SAME_FORMULA[verl_name]
    for seed, scale in ((0, 0.05), (1, 0.3), (2, 1.5)):
        logp, old, adv, mask = batch(dtype, seed=seed, scale=scale)
        cfg = actor(eps_low=0.2, eps_high=0.28, **loss_kw)
        p = PolicyLossParams(eps_low=0.2, eps_high=0.28)
        v, gv = verl_loss(verl_name, logp, old, adv, mask, agg, cfg)
        o, go = our_loss(ours, logp, old, adv, mask, agg, p, agg_kw=SKIP[agg], **kw)
        close(o, v, dtype, msg=f"{verl_name} value {agg} seed {seed}")
        close(go * mask, gv * mask, dtype, msg=f"{verl_name} gradient {agg} seed {seed}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sapo_matches_verl_which_always_aggregates_seq_mean_token_mean(dtype):
    logp, old, adv, mask = batch(dtype, seed=3)
    cfg = ActorConfig(strategy="fsdp", rollout_n=4, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=4,
                      use_dynamic_bsz=False, tau_pos=0.9, tau_neg=1.3, policy_loss=PolicyLossConfig())
    for verl_agg in ("token-mean", "seq-mean-token-mean"):  # verl ignores loss_agg_mode for sapo
        v, gv = verl_loss("sapo", logp, old, adv, mask, verl_agg, cfg)
        o, go = our_loss("sapo", logp, old, adv, mask, "seq-mean-token-mean", PolicyLossParams(),
                         agg_kw={"empty_rows": "skip"}, tau_pos=0.9, tau_neg=1.3)
        close(o, v, dtype)
        close(go * mask, gv * mask, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gmpo_matches_verl_geo_mean_up_to_its_1e8_length_epsilon(dtype):
    for seed in range(3):
        logp, old, adv, mask = batch(dtype, seed=seed, scale=0.5)
        v, gv = verl_loss("geo_mean", logp, old, adv, mask, "token-mean", actor(0.4, 0.4))
        # verl: torch.mean over ALL rows (an empty row counts, loss 0) = our seq-mean-token-mean default "count"
        o, go = our_loss("gmpo", logp, old, adv, mask, "seq-mean-token-mean", PolicyLossParams(0.4, 0.4))
        close(o, v, dtype, rtol=max(TOL[dtype]["rtol"], 1e-7))  # verl divides by n_b + 1e-8
        close(go * mask, gv * mask, dtype, rtol=max(TOL[dtype]["rtol"], 1e-7), atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_cov_matches_verl_when_every_candidate_is_cut(dtype):
    # With ratio large enough that n_clip >= #candidates, verl's random draw takes them all: deterministic.
    g = torch.Generator().manual_seed(5)
    B, T = 4, 12
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 4).to(dtype)
    old = (logp.double() + 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64)).to(dtype)
    adv = (3 * torch.randn(B, 1, generator=g, dtype=torch.float64)).expand(B, T).contiguous().to(dtype)
    mask = torch.ones(B, T, dtype=dtype)
    mask[1, 8:] = 0
    cfg = actor(clip_cov_ratio=0.9, clip_cov_lb=0.5, clip_cov_ub=5.0)
    v, gv = verl_loss("clip_cov", logp, old, adv, mask, "token-mean", cfg)
    o, go = our_loss("clip_cov", logp, old, adv, mask, "token-mean", PolicyLossParams(), ratio=0.9, lb=0.5, ub=5.0)
    assert int((go == 0).sum()) > int((mask == 0).sum())  # some real tokens were cut
    close(o, v, dtype)
    close(go * mask, gv * mask, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_log_ratios_differ_exactly_by_verls_clamps(dtype):
    # verl clamps log r to [-20, 20] in vanilla / cispo / sapo / dppo, and GSPO's sequence log-ratio at 10.
    logp, old, adv, mask = batch(dtype, seed=6, empty_row=False)
    old = old.clone()
    old[0] = logp[0] - 25.0  # log r = +25 on row 0: r = 7.2e10
    old[1] = logp[1] + 25.0  # log r = -25
    adv = adv.clone()
    adv[0], adv[1] = -1.0, 1.0  # A < 0 with huge r: dual clip caps the loss; A > 0 with tiny r: unclipped
    p = PolicyLossParams()
    for verl_name, ours, kw in (("vanilla", "dual_clip", {}), ("cispo", "cispo", {})):
        v, _ = verl_loss(verl_name, logp, old, adv, mask, "token-mean", actor())
        o, _ = our_loss(ours, logp, old, adv, mask, "token-mean", p, **kw)
        old_c = logp - (logp - old).clamp(-20.0, 20.0)  # solidrl on verl's clamped ratio reproduces verl
        oc, _ = our_loss(ours, logp, old_c, adv, mask, "token-mean", p, **kw)
        close(oc, v, dtype)
    # GSPO: mean log-ratio 12 on a row with A < 0 (so the clip does not bind on the upper side): s = e^12 vs e^10
    logp, old, adv, mask = batch(dtype, seed=7, empty_row=False)
    old = logp - 12.0
    adv = -adv.abs()
    v, _ = verl_loss("gspo", logp, old, adv, mask, "seq-mean-token-mean", actor())
    o, _ = our_loss("seq_ratio", logp, old, adv, mask, "seq-mean-token-mean", p, agg_kw={"empty_rows": "skip"})
    close(v, (adv[:, 0].abs() * math.exp(10.0)).mean(), dtype)
    close(o, (adv[:, 0].abs() * math.exp(12.0)).mean(), dtype)


def test_bypass_mode_ppo_clip_is_verls_vanilla_on_rollout_logprobs():
    logp, old, adv, mask = batch(torch.float64, seed=8)
    cfg = ActorConfig(strategy="fsdp", rollout_n=4, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=4,
                      use_dynamic_bsz=False,
                      policy_loss=PolicyLossConfig(rollout_correction={"loss_type": "ppo_clip"}))
    v, gv = verl_loss("bypass_mode", logp, old, adv, mask, "token-mean", cfg)
    o, go = our_loss("dual_clip", logp, old, adv, mask, "token-mean", PolicyLossParams())
    close(o, v, torch.float64)
    close(go, gv, torch.float64)


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_agg_loss_matches_with_verls_empty_row_semantics(dtype):
    logp, _, _, mask = batch(dtype, seed=9)  # row 2 is empty
    x = logp * 3 + 1
    B, T = x.shape
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        v = ca.agg_loss(x, mask, mode)
        close(AGGREGATIONS.get(mode)(x, mask, float(T), **SKIP[mode]), v, dtype)
        if mode != "token-mean":  # the default ("count", TRL's) differs by B' / B
            n_rows = int((mask.sum(-1) > 0).sum())
            close(AGGREGATIONS.get(mode)(x, mask, float(T)), v * n_rows / B, dtype)
    # Dr.GRPO: verl divides by (non-empty rows) * loss_scale_factor, loss_scale_factor defaulting to the padded width T
    v = ca.agg_loss(x, mask, "seq-mean-token-sum-norm")
    close(AGGREGATIONS.get("seq-mean-token-sum-norm")(x, mask, float(T), empty_rows="skip"), v, dtype)
    v = ca.agg_loss(x, mask, "seq-mean-token-sum-norm", loss_scale_factor=16)
    close(AGGREGATIONS.get("seq-mean-token-sum-norm")(x, mask, 16.0, empty_rows="skip"), v, dtype)
    # and with the global batch size verl's trainer passes (global_batch_size = B): our default "count"
    v = ca.agg_loss(x, mask, "seq-mean-token-sum-norm", global_batch_size=B, loss_scale_factor=16)
    close(AGGREGATIONS.get("seq-mean-token-sum-norm")(x, mask, 16.0), v, dtype)


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def verl_adv(name, rewards, L=1, lengths=None, **kw):
    """verl estimator on [N, G] outcome rewards laid out as verl does: score on the last response token."""
    N, G = rewards.shape
    r = rewards.reshape(-1)
    mask = torch.ones(N * G, L, dtype=rewards.dtype)
    if lengths is not None:
        mask = (torch.arange(L)[None] < torch.as_tensor(lengths)[:, None]).to(rewards.dtype)
    tok = torch.zeros(N * G, L, dtype=rewards.dtype)
    last = mask.sum(-1).long() - 1
    tok[torch.arange(N * G), last] = r
    index = np.repeat(np.arange(N), G)
    fn = ca.get_adv_estimator_fn(name)
    if name in ("reinforce_plus_plus",):
        adv, _ = fn(token_level_rewards=tok, response_mask=mask, config=AlgoConfig(gamma=1.0))
    else:
        adv, _ = fn(token_level_rewards=tok, response_mask=mask, index=index, config=AlgoConfig(**kw), **kw)
    return adv, mask


def rewards(dtype, seed=0, N=4, G=5, binary=False):
    g = torch.Generator().manual_seed(seed)
    r = (torch.rand(N, G, generator=g) < 0.5).double() if binary else torch.randn(N, G, generator=g, dtype=torch.float64)
    return r.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_group_advantages_match(dtype, binary):
    r = rewards(dtype, seed=int(binary), binary=binary)
    r[0] = r[0, 0] if not binary else 1.0  # an all-equal group too (exact zeros on our side)
    for verl_name, ours, kw, verl_kw in (
        ("grpo", "grpo", {"unbiased_std": True}, {}),
        ("grpo_vectorized", "grpo", {"unbiased_std": True}, {}),
        ("grpo", "dr_grpo", {}, {"norm_adv_by_std_in_grpo": False}),
        ("rloo", "rloo", {}, {}),
        ("rloo_vectorized", "rloo", {}, {}),
        ("grpo_passk", "grpo_passk", {}, {}),
        ("gpg", "gpg", {}, {}),
    ):
        v, _ = verl_adv(verl_name, r, **verl_kw)
        o = ADVANTAGES.get(ours)(r, **kw).reshape(-1)
        ok = torch.ones_like(o, dtype=torch.bool)
        if verl_name.startswith("grpo") and verl_name != "grpo_passk" and "norm_adv_by_std_in_grpo" not in verl_kw:
            ok[:5] = False  # the all-equal group: see test_verl_grpo_all_equal_float32_group_hazard
        # grpo_vectorized computes its group statistics in float32 whatever the input dtype (verl group_mean_std),
        # and gpg's alpha = bsz / count_nonzero is a float32 tensor
        dt = torch.float32 if verl_name in ("grpo_vectorized", "gpg") else dtype
        close(o[ok], v[:, 0][ok], dt, atol=1e-5 if dt == torch.float32 else 1e-10, msg=f"{verl_name}")


def test_verl_grpo_all_equal_float32_group_hazard():
    # 16 rewards of 0.7 in float32: verl's mean is off by ~1 ulp and divides it by std + 1e-6 ~ 1e-6;
    # solidrl returns exact zeros.
    r = torch.full((1, 16), 0.7, dtype=torch.float32)
    v, _ = verl_adv("grpo", r)
    o = ADVANTAGES.get("grpo")(r, unbiased_std=True)
    assert torch.equal(o, torch.zeros_like(o))
    assert float(v.abs().max()) > 1e-3, "verl's all-equal float32 group no longer shows the rounding advantage"


def test_singleton_groups_verl_substitutes_mean_0_std_1_and_we_refuse():
    from solidrl.trainer.config import ConfigError
    r = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    v, _ = verl_adv("grpo", r)
    close(v[:, 0], r[:, 0] / (1 + 1e-6), torch.float32)  # verl's substitute std is a float32 tensor(1.0)
    v, _ = verl_adv("grpo", r, norm_adv_by_std_in_grpo=False)
    close(v[:, 0], r[:, 0], torch.float64)
    for name in ("grpo", "dr_grpo", "rloo", "grpo_passk", "gpg"):
        with pytest.raises(ConfigError, match="needs at least 2 samples per prompt"):
            ADVANTAGES.get(name)(r)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reinforce_pp_whitening_is_per_token_in_verl(dtype):
    r = rewards(dtype, seed=3)
    for verl_name, ours in (("reinforce_plus_plus", "reinforce_pp"), ("reinforce_plus_plus_baseline", "reinforce_pp_baseline")):
        v, _ = verl_adv(verl_name, r, L=1)  # one token per response: the same statistic
        o = ADVANTAGES.get(ours)(r).reshape(-1)
        close(o, v[:, 0], dtype, atol=1e-5 if dtype == torch.float32 else 1e-10)
        # equal lengths L: verl's unbiased variance over N G L tokens = ours * L (NG - 1) / (NG L - 1)
        L, S = 3, r.numel()
        v, _ = verl_adv(verl_name, r, L=L)
        factor = math.sqrt(L * (S - 1) / (S * L - 1))
        close(o / factor, v[:, 0], dtype, atol=1e-4 if dtype == torch.float32 else 1e-6)


def test_opo_is_dr_grpo_when_a_groups_lengths_are_equal_and_length_weighted_otherwise():
    # OPO's baseline is sum_i L_i r_i / sum_i L_i: our signature has no lengths (docs/peers.md: not available)
    r = rewards(torch.float64, seed=4)
    v, _ = verl_adv("opo", r, L=4)
    close(v[:, -1], ADVANTAGES.get("dr_grpo")(r).reshape(-1), torch.float64)
    lengths = torch.randint(1, 5, (r.numel(),), generator=torch.Generator().manual_seed(0))
    v, mask = verl_adv("opo", r, L=4, lengths=lengths)
    Lg = lengths.view(r.shape).double()
    want = r - (Lg * r).sum(1, keepdim=True) / Lg.sum(1, keepdim=True)
    close(v[torch.arange(r.numel()), lengths - 1], want.reshape(-1), torch.float64)


# ---------------------------------------------------------------------------------------------
# KL estimators and rollout corrections
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_penalties_match_and_k3_differs_by_verls_clamps(dtype):
    logp, ref, _, _ = batch(dtype, seed=10, scale=0.8)
    for verl_name, ours in (("k1", "k1"), ("k2", "k2"), ("low_var_kl", "k3")):
        close(KL_ESTIMATORS.get(ours)(logp, ref, None, None), ca.kl_penalty(logp, ref, verl_name), dtype)
    # ref - logp = 15: k3 = e^15 - 16 = 3.27e6; verl clamps the result to 10. ref - logp = 25: verl also clamps d at 20.
    lp = torch.zeros(2, dtype=dtype)
    rf = torch.tensor([15.0, 25.0], dtype=dtype)
    close(ca.kl_penalty(lp, rf, "low_var_kl"), [10.0, 10.0], dtype)
    close(KL_ESTIMATORS.get("k3")(lp, rf, None, None), [math.expm1(15.0) - 15.0, math.expm1(25.0) - 25.0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_corrections_match(dtype):
    _, _, _, mask = batch(dtype, seed=11)
    g = torch.Generator().manual_seed(11)
    lr = 0.6 * torch.randn(mask.shape, generator=g, dtype=torch.float64)
    lr[0], lr[1] = math.log(1.4), math.log(0.7)  # in [0.8, 1.5] but not [1/1.5, 1/0.8], and the reverse
    lr = lr.to(dtype)
    p = CorrectionParams(tis_cap=1.5, icepop_low=0.6, icepop_high=1.7, seq_low=0.8, seq_high=1.5)
    on = mask > 0
    w, _ = rch.compute_rollout_correction_weights(lr, mask, rollout_is="token", rollout_is_threshold=1.5)
    close(CORRECTIONS.get("tis")(lr, mask, p), w, dtype)  # 0 off the mask on both sides
    w, _ = rch.compute_rollout_correction_weights(lr, mask, rollout_is="token", rollout_is_threshold="0.6_1.7")
    close(CORRECTIONS.get("icepop")(lr, mask, p)[on], w[on], dtype)  # the IS path reads the ratio itself
    w, _ = rch.compute_rollout_correction_weights(lr, mask, rollout_is="sequence", rollout_is_threshold=1.5)
    close(CORRECTIONS.get("seq_tis")(lr, mask, p), w, dtype)
    # rejection: verl's seq_mean_k1 statistic is log(rollout / train), so "0.8_1.5" keeps rho in [1/1.5, 1/0.8]
    rs, _ = rch.compute_rollout_rejection_mask(lr, mask, rollout_rs="seq_mean_k1", rollout_rs_threshold="0.8_1.5")
    ours = CORRECTIONS.get("geo_rs")(lr, mask, p, convention="verl_k1")
    close(ours[on], rs[on], dtype)
    plain = CORRECTIONS.get("geo_rs")(lr, mask, p)  # the "ratio" convention keeps [0.8, 1.5]: a different set
    rho = torch.exp((lr * mask).sum(-1) / mask.sum(-1).clamp(min=1))
    assert torch.equal(plain[:, 0] > 0, (rho >= 0.8) & (rho <= 1.5))
    full = mask.sum(-1) > 0  # (verl also rejects an empty row; it has no token to weigh)
    assert torch.equal((rs[:, 0] > 0)[full], ((rho >= 1 / 1.5) & (rho <= 1 / 0.8))[full])
    assert not torch.equal((rs[:, 0] > 0)[full], (plain[:, 0] > 0)[full])  # the mirrored range really differs here

"""solidrl.probes.recorder on real tiny runs (nano, 8 prompts x 4 samples, 3 steps).

Claims: a default run writes every contract key on every row; on the on-policy default the ratio is
exactly 1 and the clip fractions exactly 0; kl/step >= 0; with lr = 0 the extra forward reproduces
pi_old bit for bit (kl/step = entropy/delta = 0); the logged values equal independent computations
from hooks of the test's own; the stats file holds the contract's keys; a non-finite logit in a probe
forward stops the run with a one-line error naming the step and the quantity, keeping earlier rows.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.special
import torch

from conftest import read_rows, tiny_overrides
from solidrl.probes import recorder as R
from solidrl.theory.registry import Registry
from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer, train
from solidrl.trainer.rollout import response_logits

ROW_KEYS = [
    "entropy/token_mean", "entropy/seq_mean", "entropy/sampled_token_mean", "entropy/sampled_seq_mean",
    "entropy/delta", "entropy/new_token_mean",
    "kl/step", "kl/step_reverse", "kl/step_k1", "kl/step_k2", "kl/step_k3",
    "kl/ref_exact", "kl/ref_exact_reverse", "kl/ref_k1", "kl/ref_k2", "kl/ref_k3",
    "grad/norm", "grad/norm_embed", "grad/norm_layer0", "grad/norm_layer1", "grad/norm_head", "grad/norm_other",
    "update/norm", "update/rel_norm", "update/norm_over_lr", "update/rms_over_lr",
    "ratio/mean", "ratio/min", "ratio/max", "ratio/log_std",
    "ratio/clip_frac", "ratio/clip_frac_low", "ratio/clip_frac_high", "ratio/dual_clip_frac",
    "mismatch/logp_abs_mean", "mismatch/logp_abs_max", "mismatch/kl_k1", "mismatch/kl_k3",
    "reward/mean", "reward/accuracy", "reward/std", "reward/pass@1", "reward/pass@2", "reward/pass@4",
    "response/length_mean", "response/length_max", "response/truncated_frac",
    "adv/mean", "adv/std", "adv/abs_mean", "adv/zero_frac",
    "cov/logp_adv", "cov/top20_entropy_weight_frac", "time/probes_s",
]
STATS_TOKEN = ["logp", "entropy", "sum_p2", "sum_p2_logp", "sum_p3", "coef", "adv", "seq_index", "log_ratio"]
STATS_SEQ = ["reward", "correct", "length", "truncated", "group_index"]
STATS_SCALAR = ["lr", "group_size", "vocab_size", "update_norm", "grad_norm"]


def cfg_of(**over):
    return apply_overrides(TrainConfig(), tiny_overrides(**over))


def run(tmp_path, extra_setup=None, **over):
    def setup(t):
        R.attach(t)
        if extra_setup:
            extra_setup(t)
    t = train(cfg_of(**over), tmp_path, progress=False, setup=setup)
    return t, read_rows(tmp_path)


class Witness:
    """The test's own hooks: pi_old logits, a parameter copy before the step, and -d loss/d logp."""

    def __init__(self, t: Trainer):
        self.t, self.steps = t, {}
        t.add_hook("after_rollout", self.after_rollout)
        t.add_hook("after_backward", self.after_backward)
        t.add_hook("step_end", self.step_end)

    def after_rollout(self, ctx):
        self.cur = {"old": ctx.old_logits.double().clone(), "mask": ctx.rollout.response_mask.clone(),
                    "ids": ctx.rollout.response_ids.clone(), "adv": ctx.advantages.double().clone(),
                    "theta": [p.detach().clone() for p in ctx.model.parameters()]}

    def after_backward(self, ctx):
        self.cur["dlogp"] = ctx.logp.grad.double().clone()

    def step_end(self, ctx):
        with torch.no_grad():
            self.cur["new"] = response_logits(ctx.model, ctx.rollout).double()
        self.cur["delta"] = [p.detach() - b for p, b in zip(ctx.model.parameters(), self.cur["theta"])]
        self.steps[ctx.step] = self.cur


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("default_run")
    box = {}
    t, rows = run(d, extra_setup=lambda tr: box.setdefault("w", Witness(tr)))
    return d, rows, box["w"]


def test_default_run_writes_every_key_on_every_row(default_run):
    _, rows, _ = default_run
    assert len(rows) == 3
    for row in rows:
        missing = [k for k in ROW_KEYS if k not in row]
        assert not missing, f"step {row['step']}: missing {missing}"
        assert all(math.isfinite(row[k]) for k in ROW_KEYS), row


@pytest.mark.parametrize("over", [{}, {"offpolicy.mini_batches": 2, "algo.kl_coef": 0.05, "algo.entropy_coef": 0.01}])
def test_the_full_train_probe_set_does_not_change_training(tmp_path, over):
    """Every probe `solidrl train` attaches (probeset.attach_probes), with the loss audit's extra autograd,
    the consistency check and the JVP's weight swap on every step: the loop's rows are as without probes."""
    from solidrl.probes.probeset import attach_probes

    bare = read_rows(train(cfg_of(**{"probes.enabled": False, **over}), tmp_path / "bare", progress=False).out)
    probed = read_rows(train(cfg_of(**{"probes.jvp_every": 1, "probes.audit_every": 1, **over}), tmp_path / "probed",
                             progress=False, setup=attach_probes).out)
    loop_keys = sorted(k for k in bare[0] if not k.startswith("time/"))
    assert {"reward/mean", "loss", "grad/norm", "lr"} <= set(loop_keys) and len(bare) == len(probed) == 3
    assert any(k.startswith("loss_audit/") for k in probed[0]) and "pred/jvp/kl/step" in probed[0]
    assert [{k: r[k] for k in loop_keys} for r in probed] == [{k: r[k] for k in loop_keys} for r in bare]


def test_on_policy_default_ratio_is_exactly_one_and_nothing_clips(default_run):
    for row in default_run[1]:
        assert row["ratio/mean"] == row["ratio/min"] == row["ratio/max"] == 1.0
        assert row["ratio/log_std"] == 0.0
        assert row["ratio/clip_frac"] == row["ratio/clip_frac_low"] == row["ratio/clip_frac_high"] == 0.0
        assert row["ratio/dual_clip_frac"] == 0.0


def test_kl_step_nonnegative_and_ref_kl_zero_before_the_first_update(default_run):
    rows = default_run[1]
    assert all(r["kl/step"] >= 0 and r["kl/step_reverse"] >= 0 for r in rows)
    # pi_old = pi_ref at step 0; the reference forward shares each group's prompt pass (float32 rounding)
    assert abs(rows[0]["kl/ref_exact"]) < 1e-10 and abs(rows[0]["kl/ref_k3"]) < 1e-10
    assert all(r["kl/ref_exact"] > 0 for r in rows[1:])


def _np_entropy_kl(old, new, mask):
    p, q = scipy.special.softmax(old, -1), scipy.special.softmax(new, -1)
    sel = mask > 0
    h_old = -(p * np.log(p)).sum(-1)[sel]
    h_new = -(q * np.log(q)).sum(-1)[sel]
    kl = (p * (np.log(p) - np.log(q))).sum(-1)[sel]
    return h_old, h_new, kl


def test_logged_values_equal_independent_computations(default_run):
    _, rows, w = default_run
    for row in rows:
        s = w.steps[row["step"]]
        old, new, mask = s["old"].numpy(), s["new"].numpy(), s["mask"].numpy()
        h_old, h_new, kl = _np_entropy_kl(old, new, mask)
        assert row["entropy/token_mean"] == pytest.approx(h_old.mean(), rel=1e-10)
        seq = [(-(scipy.special.softmax(o, -1) * scipy.special.log_softmax(o, -1)).sum(-1)[m > 0]).mean()
               for o, m in zip(old, mask)]
        assert row["entropy/seq_mean"] == pytest.approx(np.mean(seq), rel=1e-10)
        assert row["entropy/delta"] == pytest.approx((h_new - h_old).mean(), rel=1e-8, abs=1e-13)
        assert row["kl/step"] == pytest.approx(kl.mean(), rel=1e-8, abs=1e-15)
        # update norm from the test's own parameter copies (float32 differences summed in float64)
        upd = math.sqrt(sum(float((d.double() ** 2).sum()) for d in s["delta"]))
        assert row["update/norm"] == pytest.approx(upd, rel=1e-12)
        assert row["update/norm_over_lr"] == pytest.approx(upd / row["lr"], rel=1e-12)
        # per-group gradient norms add up (root-sum-square) to the loop's own grad/norm
        groups = [v for k, v in row.items() if k.startswith("grad/norm_")]
        assert math.sqrt(sum(v * v for v in groups)) == pytest.approx(row["grad/norm"], rel=1e-5)


def test_stats_file_holds_the_contract_keys_and_the_exact_coefficients(default_run):
    d, rows, w = default_run
    for row in rows:
        st = torch.load(d / "stats" / f"step_{row['step']:06d}.pt")
        assert set(STATS_TOKEN + STATS_SEQ + STATS_SCALAR) <= set(st)
        n = st["logp"].numel()
        for k in STATS_TOKEN:
            assert st[k].shape == (n,) and st[k].dtype == (torch.long if k == "seq_index" else torch.float64), k
        for k in STATS_SEQ:
            assert st[k].shape == (32,), k
        assert all(st[k].dim() == 0 for k in STATS_SCALAR)
        # vanilla loss, token-mean: loss = -sum_t A_t logp_t / N, so c_t = -d loss/d logp_t = A_t / N
        torch.testing.assert_close(st["coef"], st["adv"] / n, rtol=1e-6, atol=1e-9)
        s = w.steps[row["step"]]
        torch.testing.assert_close(st["coef"], -s["dlogp"][s["mask"] > 0], rtol=0, atol=0)
        assert float(st["entropy"].mean()) == pytest.approx(row["entropy/token_mean"], rel=1e-12)
        assert float(st["update_norm"]) == row["update/norm"]
        lp, a = st["logp"].numpy(), st["adv"].numpy()
        assert row["cov/logp_adv"] == pytest.approx(float(np.cov(lp, a, bias=True)[0, 1]), rel=1e-10, abs=1e-15)
        assert int(st["vocab_size"]) == s["old"].shape[-1] and int(st["group_size"]) == 4


def test_shared_prompt_forward_matches_the_plain_forward(default_run):
    from solidrl.trainer.rollout import prompt_runs

    t = default_run[2].t
    ro = t.rollout(t.sample_problems(7), 7)
    first, run_of = prompt_runs(ro.prompt_ids, ro.prompt_mask)
    assert first.tolist() == list(range(0, 32, 4)) and run_of.tolist() == [i // 4 for i in range(32)]
    shifted = ro.select(torch.roll(torch.arange(32), 1))  # runs of 1, 4, ..., 4, 3 rows
    assert prompt_runs(shifted.prompt_ids, shifted.prompt_mask)[0].tolist() == [0, 1, 5, 9, 13, 17, 21, 25, 29]
    for batch in (ro, shifted):
        grads = []
        for share in (False, True):
            t.model.zero_grad(set_to_none=True)
            z = response_logits(t.model, batch, share_prompts=share)
            lp = torch.log_softmax(z.double(), -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
            (lp * batch.response_mask).sum().backward()
            grads.append((z.detach(), torch.cat([p.grad.reshape(-1) for p in t.model.parameters()])))
        (z0, g0), (z1, g1) = grads
        m = batch.response_mask > 0
        assert (z0 - z1)[m].abs().max() < 1e-4  # float32 rounding of another summation order
        assert float((g0 - g1).norm() / g0.norm()) < 1e-4  # the gradient flows through the shared cache
    t.model.zero_grad(set_to_none=True)
    distinct = ro.select(torch.arange(0, 32, 4))  # no repeated prompt: the plain forward, bit for bit
    assert prompt_runs(distinct.prompt_ids, distinct.prompt_mask) is None
    with torch.no_grad():
        assert torch.equal(response_logits(t.model, distinct), response_logits(t.model, distinct, share_prompts=False))


def test_lr_zero_extra_forward_reproduces_pi_old_exactly(tmp_path):
    _, rows = run(tmp_path, **{"optim.lr": 0.0, "run.steps": 1})
    for r in rows:
        assert r["kl/step"] == 0.0 and r["entropy/delta"] == 0.0 and r["update/norm"] == 0.0
        assert "update/norm_over_lr" not in r  # not computable at lr = 0: absent, never 0


def test_nan_in_probe_forward_is_a_nan_collapse_naming_step_and_quantity(tmp_path):
    """A probe never turns a collapse into a failure (issue 16): the run ends collapsed, kind nan."""
    def poison(t):
        def hook(ctx):
            if ctx.step == 1:
                with torch.no_grad():
                    ctx.model.lm_head.weight[0, 0] = float("nan")
        t.add_hook("after_optimizer_step", hook)

    run(tmp_path, extra_setup=poison)
    rows = read_rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1] and "kl/step" in rows[0]
    msg = rows[1]["collapse/reason"]
    assert "\n" not in msg and msg.startswith("step 1: non-finite new-policy logits")
    st = json.loads((tmp_path / "status.json").read_text())
    assert st == {"status": "collapsed", "step": 1, "kind": "nan", "reason": msg}


def test_probe_groups_every_and_disabled(tmp_path):
    _, rows = run(tmp_path / "a", **{"probes.groups": "entropy,grad", "probes.every": 2, "probes.save_stats": False})
    assert "entropy/token_mean" in rows[0] and "grad/norm_embed" in rows[2] and "update/norm" in rows[0]
    assert "entropy/token_mean" not in rows[1] and "time/probes_s" not in rows[1]
    assert not any(k.startswith(("kl/", "ratio/", "cov/", "pred/")) for r in rows for k in r)
    assert not (tmp_path / "a" / "stats").exists()
    t = Trainer(cfg_of(**{"probes.enabled": False}), tmp_path / "b", progress=False)
    assert not R.attach(t).enabled and not any(t.hooks.values())  # disabled: no hook at all
    with pytest.raises(ConfigError, match="unknown probe group 'entropie'; known: all, entropy"):
        R.parse_groups("entropy,entropie")


def test_off_policy_minibatches_and_logit_noise(tmp_path):
    _, rows = run(tmp_path, **{"offpolicy.mini_batches": 2, "offpolicy.logit_noise": 1.0,
                               "probes.groups": "ratio,mismatch,step,grad", "optim.lr": 3e-3, "run.steps": 2})
    for r in rows:
        assert r["ratio/clip_frac"] == pytest.approx(r["ratio/clip_frac_low"] + r["ratio/clip_frac_high"])
        assert r["mismatch/logp_abs_max"] > 0.1  # a noisy sampler: clearly not the trainer's distribution
        assert r["kl/step"] >= 0
    assert any(r["ratio/log_std"] > 0 for r in rows)  # the second mini-batch sees pi != pi_old


def test_max_states_subset_and_jvp_first_order_prediction(tmp_path):
    # float64 so that the differences below sit far above rounding; one fresh-AdamW step is
    # dtheta = -lr (g / (|g| + eps) + wd theta), exactly proportional to lr, so the JVP's dz is too.
    res = {}
    for lr in (1e-5, 1e-6):
        d = tmp_path / f"lr{lr:g}"
        _, rows = run(d, **{"probes.max_states": 8, "probes.jvp_every": 1, "run.steps": 1,
                            "probes.groups": "step", "optim.lr": lr, "model.dtype": "float64"})
        st = torch.load(d / "stats" / "step_000000.pt")
        assert {"jvp_cov", "jvp_var", "jvp_index"} <= set(st)
        idx = st["jvp_index"]
        assert idx.numel() == st["jvp_cov"].numel() and int(idx.max()) < st["logp"].numel()
        assert len(set(st["seq_index"][idx].tolist())) == 8  # eight sequences' tokens
        assert (st["jvp_var"] >= 0).all()
        # The subset of kl/step / entropy/delta is the JVP's subset (one seed), so the two are comparable.
        res[lr] = (rows[0]["entropy/delta"], -float(st["jvp_cov"].mean()),
                   rows[0]["kl/step"], float(st["jvp_var"].mean()) / 2)
    # First order: dH = -Cov(log pi, dz) + O(|dz|^2), KL = Var(dz)/2 + O(|dz|^3) (theory/kernel.py).
    # The size of dH's second-order rest depends on the batch (it is of the size of kl/step, which can
    # exceed |dH| when dH nearly cancels), so the test is the order itself: a tenth of the step leaves
    # a hundredth of dH's residual (a thousandth of KL's); a wrong first-order term would leave a tenth.
    (h1, p1, k1, q1), (h2, p2, k2, q2) = res[1e-5], res[1e-6]
    assert abs(h1 - p1) > 0 and abs(h2 - p2) < abs(h1 - p1) / 30
    assert k2 == pytest.approx(q2, rel=0.01) and abs(k2 - q2) < abs(k1 - q1) / 100
    assert p2 == pytest.approx(p1 / 10, rel=1e-6) and q2 == pytest.approx(q1 / 100, rel=1e-6)


def test_predictors_are_written_and_missing_stats_skip_them(tmp_path, monkeypatch):
    def mean_entropy(stats):
        return {"entropy/delta": -float(stats["entropy"].mean())}

    def needs_jvp(stats):
        return {"entropy/delta": -float(stats["jvp_cov"].mean())}  # KeyError: no JVP on these steps

    fake = Registry("predictor")  # only these two: the recorder runs what the registry holds
    fake.add("mean_entropy", mean_entropy)
    fake.add("needs_jvp", needs_jvp)
    monkeypatch.setattr(R, "PREDICTORS", fake)
    assert set(R.load_predictors()) == {"mean_entropy", "needs_jvp"}
    _, rows = run(tmp_path, **{"probes.groups": "entropy,pred", "run.steps": 2})
    for r in rows:
        assert r["pred/mean_entropy/entropy/delta"] == pytest.approx(-r["entropy/token_mean"], rel=1e-12)
        assert not any(k.startswith("pred/needs_jvp/") for k in r)

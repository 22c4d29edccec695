"""trainer/shaping.py: each reward transform and token weighting against an independent computation
(worked examples, enumeration, float64 by hand), and their wiring into the loop (what the loss sees)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import read_rows, strip_time, tiny_overrides
from solidrl.theory.registry import UnknownNameError
from solidrl.trainer import shaping as SH
from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer, train


def cfg_of(**over):
    return apply_overrides(TrainConfig(), tiny_overrides(**over))


def batch(S=8, R=5, V=7, G=4, seed=0, correct=None, kl=True) -> SH.ShapingBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, R + 1, (S,), generator=g)
    mask = (torch.arange(R)[None, :] < lengths[:, None]).float()
    ids = torch.randint(0, V, (S, R), generator=g)
    old = torch.randn(S, R, V, generator=g)
    ref = torch.randn(S, R, V, generator=g) if kl else None
    corr = torch.randint(0, 2, (S,), generator=g).float() if correct is None else torch.tensor(correct)
    return SH.ShapingBatch(correct=corr, lengths=lengths, response_ids=ids, mask=mask, group_size=G, budget=R,
                           old_logits=old, old_logp=torch.log_softmax(old, -1).gather(-1, ids[..., None])[..., 0],
                           ref_logits=ref, kl_estimator="k3")


def test_length_penalty_worked_example():
    b = batch()
    r = torch.ones(8)
    out = SH.length_penalty(r, b, coef=0.5)
    # r_i - 0.5 * len_i / 5, e.g. a response of 2 tokens: 1 - 0.5 * 2/5 = 0.8
    want = [1.0 - 0.5 * int(n) / 5 for n in b.lengths]
    assert out.tolist() == pytest.approx(want, abs=1e-7)


@pytest.mark.parametrize("est", ["k1", "k2", "k3", "exact"])
def test_kl_penalty_equals_the_float64_sum_of_the_estimator_over_each_response(est):
    b = batch()
    b = SH.ShapingBatch(**{**b.__dict__, "kl_estimator": est})
    r = torch.zeros(8)
    out = SH.kl_penalty(r, b, coef=0.3)
    lp = torch.log_softmax(b.old_logits.double(), -1)
    lr = torch.log_softmax(b.ref_logits.double(), -1)
    d = (lp - lr).gather(-1, b.response_ids[..., None])[..., 0]
    k = {"k1": d, "k2": 0.5 * d ** 2, "k3": torch.exp(-d) - 1 + d, "exact": (lp.exp() * (lp - lr)).sum(-1)}[est]
    want = -0.3 * (k * b.mask.double()).sum(-1)
    assert torch.allclose(out.double(), want, atol=1e-5)  # float32 logits: ~1e-7 per token, 5 tokens


def test_kl_penalty_without_the_reference_forward_says_how_to_get_it():
    with pytest.raises(ConfigError, match="kl_coef > 0"):
        SH.kl_penalty(torch.zeros(8), batch(kl=False), coef=0.1)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_pass_at_k_reward_is_one_iff_a_block_of_k_has_a_correct_sample_by_enumeration(k):
    G = 4
    for bits in itertools.product([0.0, 1.0], repeat=G):  # every 0/1 outcome of one group
        r = torch.tensor(bits * 2)  # two prompts, the same outcomes
        b = SH.ShapingBatch(**{**batch().__dict__, "group_size": G})
        out = SH.pass_at_k(r, b, k=k).tolist()
        want = [float(any(bits[(i % G) // k * k:(i % G) // k * k + k])) for i in range(2 * G)]
        assert out == want, (bits, k)


def test_pass_at_k_keeps_graded_reward_levels_and_refuses_a_k_that_does_not_divide_the_group():
    r = torch.tensor([0.2, 0.9, 0.1, 0.0, 0.5, 0.5, 0.7, 0.3])
    assert SH.pass_at_k(r, batch(), k=2).tolist() == pytest.approx([0.9, 0.9, 0.1, 0.1, 0.5, 0.5, 0.7, 0.7])
    with pytest.raises(ConfigError, match="divide rollout.group_size=4"):
        SH.pass_at_k(r, batch(), k=3)


def test_hard_prompt_weights_groups_below_half_accuracy():
    # group 0: 2/4 correct (0.5, not hard); group 1: 1/4 (hard)
    b = batch(correct=[1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    tw = SH.hard_prompt(b, weight=3.0)
    assert tw.keep is None and tw.token is None
    assert tw.seq.tolist() == [1.0] * 4 + [3.0] * 4


def test_top_entropy_keeps_the_tokens_at_or_above_the_numpy_quantile():
    b = batch(S=8, R=6, V=9, seed=3)
    tw = SH.top_entropy(b, frac=0.25)
    p = torch.softmax(b.old_logits.double(), -1)
    ent = -(p * p.log()).sum(-1).numpy()
    q = np.quantile(ent[b.mask.numpy() > 0], 0.75)
    assert tw.keep.numpy().tolist() == (ent >= q - 1e-6).astype(float).tolist()


def test_token_id_and_position_weights_worked_example():
    b = batch(S=4, R=5, G=4)
    ids = b.response_ids
    tw = SH.token_id(b, token_id=int(ids[0, 0]), weight=2.5)
    assert tw.token.tolist() == torch.where(ids == ids[0, 0], 2.5, 1.0).tolist()
    tw = SH.position(b, start=1, end=3, weight=0.5)
    assert tw.token[0].tolist() == [1.0, 0.5, 0.5, 1.0, 1.0]
    assert SH.position(b, start=3, weight=2.0).token[0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0]


def test_legacy_fields_select_the_builtins_and_weightings_multiply():
    cfg = apply_overrides(TrainConfig(), {"algo.hard_prompt_weight": 2.0, "algo.token_filter": "top_entropy",
                                          "algo.token_weighting": "position"})
    b = batch(correct=[0.0] * 8)
    tw = SH.weigh_tokens(cfg, b)
    assert tw.seq.tolist() == [2.0] * 8  # every group is hard
    assert torch.equal(tw.keep, SH.top_entropy(b, frac=0.2).keep)
    assert torch.equal(tw.token, torch.ones_like(b.mask))  # position's default weight 1


def test_unknown_names_in_the_new_fields_list_the_known_ones(tmp_path):
    for over, known in (({"algo.reward_transforms": "length_penalty,nope"}, "pass_at_k"),
                        ({"algo.token_weighting": "nope"}, "token_id"), ({"algo.controller": "nope"}, "adaptive_kl")):
        with pytest.raises(UnknownNameError) as e:
            Trainer(cfg_of(**over), tmp_path, progress=False)
        assert known in str(e.value) and "\n" not in str(e.value)


def test_a_registered_token_weight_reaches_the_loss(tmp_path, monkeypatch):
    """A weight of 2 on every token doubles the PG loss and its gradient (powers of two are exact)."""
    monkeypatch.setitem(SH.TOKEN_WEIGHTINGS._params, "double", {})  # an entry without parameters
    monkeypatch.setitem(SH.TOKEN_WEIGHTINGS._items, "double",
                        lambda b: SH.TokenWeights(token=torch.full_like(b.mask, 2.0)))
    base = read_rows(train(cfg_of(**{"run.steps": 1, "probes.enabled": False}), tmp_path / "a", progress=False).out)
    dbl = read_rows(train(cfg_of(**{"run.steps": 1, "probes.enabled": False, "algo.token_weighting": "double"}),
                          tmp_path / "b", progress=False).out)
    assert dbl[0]["loss"] == pytest.approx(2 * base[0]["loss"], rel=1e-6)
    assert dbl[0]["grad/norm"] == pytest.approx(2 * base[0]["grad/norm"], rel=1e-6)
    assert dbl[0]["reward/mean"] == base[0]["reward/mean"]


def test_a_listed_reward_transform_shapes_the_rewards_the_advantages_see(tmp_path, monkeypatch):
    monkeypatch.setitem(SH.REWARD_TRANSFORMS._params, "pass_at_2", {})  # an entry without parameters
    monkeypatch.setitem(SH.REWARD_TRANSFORMS._items, "pass_at_2", lambda r, b: SH.pass_at_k(r, b, k=2))
    seen = []

    def check(ctx):
        c = ctx.correct.view(-1, 2).max(-1).values.repeat_interleave(2)  # the block max, by hand
        seen.append(torch.equal(ctx.rewards, c))

    train(cfg_of(**{"run.steps": 2, "probes.enabled": False, "algo.reward_transforms": "pass_at_2"}), tmp_path,
          progress=False, setup=lambda t: t.add_hook("after_rollout", check))
    assert seen == [True, True]
    with_none = strip_time(read_rows(train(cfg_of(**{"run.steps": 1, "probes.enabled": False,
                                                     "algo.reward_transforms": ""}), tmp_path / "n",
                                           progress=False).out))
    assert with_none == strip_time(read_rows(train(cfg_of(**{"run.steps": 1, "probes.enabled": False}),
                                                   tmp_path / "d", progress=False).out))

"""On-policy consistency (log-probs under every split) and gradient-accumulation invariance per aggregation."""
import pytest
import torch

from solidrl.probes.diagnostics import length_by_outcome, zero_signal_split
from solidrl.trainer import algos

F64 = torch.float64
AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
# Invariant: the gradient of the whole batch equals the mean of the gradients of k equal micro-batches.
# token-mean is not: each micro-batch divides by its own token count (TRL #3231); it is invariant only
# when every micro-batch is weighted by its share of the batch's tokens.
INVARIANT = {"token-mean": False, "seq-mean-token-mean": True, "seq-mean-token-sum": True,
             "seq-mean-token-sum-norm": True}


def _grads(agg, k, token_weighted=False):
    g = torch.Generator().manual_seed(0)
    B, T = 8, 6
    x = torch.randn(B, T, generator=g, dtype=F64, requires_grad=True)
    lengths = torch.tensor([1, 6, 2, 6, 3, 5, 6, 6])  # unequal lengths: micro-batches hold unequal token counts
    mask = (torch.arange(T)[None] < lengths[:, None]).to(F64)
    fn = algos.AGGREGATIONS.get(agg)
    (whole,) = torch.autograd.grad(fn(x * x, mask, 6.0), x)
    acc = torch.zeros_like(x)
    for rows in torch.arange(B).chunk(k):
        w = mask[rows].sum() / mask.sum() if token_weighted else torch.tensor(1.0 / k, dtype=F64)
        (gk,) = torch.autograd.grad(w * fn(x[rows] * x[rows], mask[rows], 6.0), x)
        acc += gk
    return whole, acc


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("k", [2, 4])
def test_gradient_accumulation_invariance_is_as_documented(agg, k):
    whole, acc = _grads(agg, k)
    assert torch.allclose(whole, acc, rtol=1e-12, atol=1e-15) is INVARIANT[agg]


def test_token_mean_is_invariant_when_micro_batches_weigh_by_their_token_share():
    whole, acc = _grads("token-mean", 4, token_weighted=True)
    assert torch.allclose(whole, acc, rtol=1e-12, atol=1e-15)


def test_recomputed_logp_agrees_across_splits_and_padding(tmp_path):
    from conftest import tiny_overrides
    from solidrl.probes.consistency import recompute_logp
    from solidrl.trainer.config import TrainConfig, apply_overrides
    from solidrl.trainer.loop import Trainer

    t = Trainer(apply_overrides(TrainConfig(), tiny_overrides()), tmp_path, progress=False)
    ro = t.rollout(t.sample_problems(0), 0)
    sel = ro.response_mask > 0
    base = recompute_logp(t.model, ro)
    pad = t.tokenizer.pad_token_id
    for k, p in [(2, 0), (4, 0), (32, 0), (1, 3), (4, 5)]:
        assert (recompute_logp(t.model, ro, k, p, pad) - base)[sel].abs().max() <= 1e-5
    # a bug the probe must see: position ids shifted by the padding (positions from the padded width)
    ro2 = ro.select(torch.arange(ro.response_ids.shape[0]))
    ro2.prompt_mask = torch.ones_like(ro2.prompt_mask)  # pads attended as if they were tokens
    assert (recompute_logp(t.model, ro2) - base)[sel].abs().max() > 1e-3


def test_zero_signal_split_worked_example():
    # 4 groups of 2: [correct, correct], [wrong, wrong], [truncated, truncated], [correct, wrong]
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0])
    correct = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    trunc = torch.tensor([False, False, False, False, True, True, False, False])
    assert zero_signal_split(adv, correct, trunc, 2) == {
        "zero_frac_all_correct": 0.25, "zero_frac_all_wrong": 0.25, "zero_frac_truncated": 0.25}
    # lengths: correct 3, 5, 4 -> 4; wrong 2, 6 ... -> mean of (2, 6, 6, 6, 1) = 4.2
    lengths = torch.tensor([3.0, 5.0, 2.0, 6.0, 6.0, 6.0, 4.0, 1.0])
    assert length_by_outcome(lengths, correct) == {"length_correct_mean": 4.0, "length_wrong_mean": 4.2}
    assert length_by_outcome(lengths[:2], correct[:2]) == {"length_correct_mean": 4.0}  # absent, never 0


def test_top_p_sampler_offset_is_the_systematic_part_of_the_ratio_and_fails_the_audit(tmp_path):
    from conftest import read_rows, tiny_overrides
    from solidrl.probes.audit import audit_run
    from solidrl.probes.commands.cli import main

    over = tiny_overrides(**{"run.steps": 1, "rollout.top_p": 0.9, "probes.groups": "diagnostics,offpolicy", "probes.save_stats": "false"})
    assert main(["train", "--quiet", "--out", str(tmp_path), *[x for k, v in over.items() for x in ("--set", f"{k}={v}")]]) == 0
    (r,) = read_rows(tmp_path)
    # fresh tokens, float32 sampler: the whole mean log-ratio is the top-p offset -log(kept mass) > 0
    assert r["mismatch/sampler_logp_offset_mean"] > 0
    assert abs(r["mismatch/sampler_logp_offset_mean"] + r["rollout_ratio/log_mean"]) < 1e-5
    item = audit_run(tmp_path).item("sampler_offset")
    assert item.passed is False and "nats" in item.measured

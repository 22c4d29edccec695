"""Metric functions: tensors in, tensors or floats out, no state, no trainer.

Every quantity the recorder logs is computed here, in float64 from the logits (a one-step
entropy change sits near float32 noise, ../shared/NOTES-transformers.md):

  distributions   softmax_stats (H, sum p^2, sum p^2 log p, sum p^3, log p(a)), pair_stats (H of both,
                  KL both ways), chunked over rows so memory stays flat for large vocabularies
  sampled         sampled_entropy (-log pi(a)), kl_sampled (Schulman's k1, k2, k3; forward and reverse)
  aggregates      token_mean, seq_mean (seq-mean-token-mean)
  loss side       ratio_stats (importance ratio, TRL's clip fractions), mismatch_stats, cov_logp_adv,
                  top_frac_weight (update weight on the highest-entropy tokens)
  outcomes        pass_at_k (Chen et al. 2021), advantage_stats
  parameters      param_group (name -> embed / layer{i} / head / other), group_norms, update_stats

Left out: anything that needs the model or the step context (the recorder's job) and any clamping:
a value that is +inf (KL with a zero-probability token under the second policy) is returned as is.

References: Schulman 2020, "Approximating KL Divergence" (k1, k2, k3); Chen et al. 2021,
"Evaluating Large Language Models Trained on Code", eq. 1 (unbiased pass@k); Cui et al. 2025,
"The Entropy Mechanism of RL for Reasoning Language Models" (Cov(log pi, A)); Wang et al. 2025,
"Beyond the 80/20 Rule" (high-entropy minority tokens); huggingface/trl GRPOTrainer (clip fractions).
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Optional

import torch
from torch import Tensor

__all__ = [
    "CHUNK_ELEMENTS", "softmax_stats", "pair_stats", "entropy_exact", "kl_exact", "sampled_entropy",
    "kl_sampled", "token_mean", "seq_mean", "ratio_stats", "mismatch_stats", "cov_logp_adv",
    "top_frac_weight", "pass_at_k", "advantage_stats", "param_group", "group_norms", "update_stats",
]

F64 = torch.float64
CHUNK_ELEMENTS = 1 << 22
"""Rows are processed in chunks of about this many float64 elements (32 MiB per temporary)."""


def _rows(logits: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    return logits.reshape(-1, logits.shape[-1]), tuple(logits.shape[:-1])


def _chunks(n: int, V: int, chunk_elements: int) -> Iterable[slice]:
    step = max(1, chunk_elements // max(V, 1))
    return (slice(i, min(i + step, n)) for i in range(0, n, step))


# The helpers below work in place where they can: each fresh [N, V] float64 temporary costs page
# faults on CPU (the allocator does not cache), which dominated these functions before.


def _plogp_sum(p: Tensor, logp: Tensor) -> Tensor:
    """sum_v p_v log p_v per row, with 0 log 0 = 0 (a -inf logit is a banned token, not a NaN)."""
    return (p * logp).masked_fill_(p == 0, 0.0).sum(-1)


def _kl_terms_sum(p: Tensor, q: Tensor, d: Tensor) -> Tensor:
    """KL(p || q) per row from d = log q - log p, as a sum of nonnegative terms (rounding never makes it < 0).

    KL = sum_v p_v (lp_v - lq_v) + (sum_v q_v - sum_v p_v)   (the added bracket is 0)
       = sum_{p_v > 0} p_v [expm1(d_v) - d_v] + sum_{p_v = 0} q_v,
    and expm1(d) - d >= 0 term by term (Schulman's k3 summed exactly); expm1 keeps small d accurate.
    """
    t = torch.expm1(d).sub_(d).mul_(p)
    return torch.where(p > 0, t, q, out=t).sum(-1)


def softmax_stats(logits: Tensor, ids: Optional[Tensor] = None,
                  chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, Tensor]:
    """Exact moments of pi = softmax(logits) per row, float64.

    logits [..., V]; ids [...] long (optional). Returns [...] tensors:
      entropy      H = -sum_v p_v log p_v
      sum_p2       sum_v p_v^2                 sum_p2_logp  sum_v p_v^2 log p_v
      sum_p3       sum_v p_v^3                 logp         log p_{ids} (only when ids is given)
    Rows are processed in chunks of ~chunk_elements, so a large vocabulary never needs the whole
    [N, V] float64 tensor at once.
    """
    z, shape = _rows(logits)
    N, V = z.shape
    names = ["entropy", "sum_p2", "sum_p2_logp", "sum_p3"] + (["logp"] if ids is not None else [])
    out = {k: torch.empty(N, dtype=F64, device=z.device) for k in names}
    flat_ids = ids.reshape(-1) if ids is not None else None
    for sl in _chunks(N, V, chunk_elements):
        lp = torch.log_softmax(z[sl].to(F64), dim=-1)
        p = lp.exp()
        p2 = p * p
        out["entropy"][sl] = -_plogp_sum(p, lp)
        out["sum_p2"][sl] = p2.sum(-1)
        out["sum_p2_logp"][sl] = _plogp_sum(p2, lp)
        out["sum_p3"][sl] = p2.mul_(p).sum(-1)
        if flat_ids is not None:
            out["logp"][sl] = lp.gather(-1, flat_ids[sl, None]).squeeze(-1)
    return {k: v.reshape(shape) for k, v in out.items()}


def pair_stats(logits_p: Tensor, logits_q: Tensor, ids: Optional[Tensor] = None,
               chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, Tensor]:
    """Two policies on the same states, one pass: H(p), H(q), KL(p||q), KL(q||p) per row, float64.

    logits_p, logits_q [..., V]; returns [...] tensors entropy_p, entropy_q, kl_pq, kl_qp, and
    logp_p, logp_q at `ids` when given. KL(p||q) = sum_v p_v (log p_v - log q_v), summed in a form whose
    terms are all >= 0 (_kl_terms_sum); p_v > 0 with q_v = 0 gives +inf (the true value, not clamped).
    """
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"pair_stats needs logits of one shape, got {tuple(logits_p.shape)} and {tuple(logits_q.shape)}")
    zp, shape = _rows(logits_p)
    zq, _ = _rows(logits_q)
    N, V = zp.shape
    names = ["entropy_p", "entropy_q", "kl_pq", "kl_qp"] + (["logp_p", "logp_q"] if ids is not None else [])
    out = {k: torch.empty(N, dtype=F64, device=zp.device) for k in names}
    flat_ids = ids.reshape(-1, 1) if ids is not None else None
    for sl in _chunks(N, V, chunk_elements):
        lp, lq = torch.log_softmax(zp[sl].to(F64), -1), torch.log_softmax(zq[sl].to(F64), -1)
        p, q = lp.exp(), lq.exp()
        out["entropy_p"][sl] = -_plogp_sum(p, lp)
        out["entropy_q"][sl] = -_plogp_sum(q, lq)
        d = lq - lp
        out["kl_pq"][sl] = _kl_terms_sum(p, q, d)
        out["kl_qp"][sl] = _kl_terms_sum(q, p, d.neg_())
        if flat_ids is not None:
            out["logp_p"][sl] = lp.gather(-1, flat_ids[sl]).squeeze(-1)
            out["logp_q"][sl] = lq.gather(-1, flat_ids[sl]).squeeze(-1)
    return {k: v.reshape(shape) for k, v in out.items()}


def entropy_exact(logits: Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """H(softmax(logits)) per row, float64: [..., V] -> [...]. In [0, log V]."""
    return softmax_stats(logits, chunk_elements=chunk_elements)["entropy"]


def kl_exact(logits_p: Tensor, logits_q: Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """KL(softmax(logits_p) || softmax(logits_q)) per row, float64: [..., V] -> [...]. >= 0; 0 iff equal."""
    return pair_stats(logits_p, logits_q, chunk_elements=chunk_elements)["kl_pq"]


def sampled_entropy(logp: Tensor) -> Tensor:
    """-log pi(a_t): unbiased for H(pi(.|s_t)) when a_t ~ pi(.|s_t). Same shape as logp, float64."""
    return -logp.to(F64)


def kl_sampled(logp: Tensor, logq: Tensor, reverse: bool = False) -> dict[str, Tensor]:
    """Per-sample KL estimators from tokens a ~ p, with r = q(a) / p(a) (Schulman 2020).

    Forward, KL(p || q):   k1 = -log r (unbiased, may be < 0)
                           k2 = (log r)^2 / 2 (>= 0, biased: its mean is an f-divergence ~ KL to 2nd order)
                           k3 = (r - 1) - log r (unbiased, >= 0)
    Reverse, KL(q || p), importance-weighted by r:
                           k1 = r log r (unbiased), k3 = r log r - (r - 1) (unbiased, >= 0); no k2.
    logp, logq: log-probabilities of the sampled tokens, same shape; returns that shape, float64.
    r - 1 is computed as expm1(log r), accurate when p ~ q.
    """
    log_r = logq.to(F64) - logp.to(F64)
    if not reverse:
        return {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": torch.expm1(log_r) - log_r}
    r_log_r = torch.exp(log_r) * log_r
    return {"k1": r_log_r, "k3": r_log_r - torch.expm1(log_r)}


def token_mean(x: Tensor, mask: Tensor) -> Tensor:
    """sum x m / sum m over every masked token of the batch (x, mask [B,T]); NaN when the mask is empty."""
    m = mask > 0
    return x[m].to(F64).mean()


def seq_mean(x: Tensor, mask: Tensor, *, empty_rows: str = "count") -> Tensor:
    """Mean over rows of each row's token mean (seq-mean-token-mean). x, mask [B,T]; float64 scalar.

    empty_rows "count" (default): every row counts in B and an empty row contributes 0, exactly as the
    trainer's seq-mean-token-mean aggregation (trainer.algos, TRL) does, so this metric equals the
    aggregate of x; "skip": only rows with >= 1 masked token count (verl's agg_loss). No row counted: NaN.
    """
    if empty_rows not in ("count", "skip"):
        raise ValueError(f"empty_rows must be 'count' or 'skip', got {empty_rows!r}")
    m = (mask > 0).to(F64)
    n = m.sum(-1)
    rows = n > 0
    xs = torch.where(mask > 0, x.to(F64), torch.zeros((), dtype=F64, device=x.device))
    per_row = torch.where(rows, xs.sum(-1) / torch.where(rows, n, torch.ones_like(n)), torch.zeros_like(n))
    if empty_rows == "skip":
        return per_row[rows].mean()
    return per_row.mean() if rows.any() else torch.tensor(math.nan, dtype=F64, device=x.device)


def ratio_stats(log_ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float,
                dual_clip_c: float) -> dict[str, float]:
    """Importance ratio r = pi / pi_old per token and the share of tokens in each clip region.

    log_ratio, adv: [N] over the tokens that enter the loss. With TRL's definitions:
      clip_frac_low  = mean[r < 1 - eps_low  and A < 0]   (PPO's lower clip binds)
      clip_frac_high = mean[r > 1 + eps_high and A > 0]   (the upper clip binds)
      clip_frac      = clip_frac_low + clip_frac_high     (either; the two events are disjoint)
      dual_clip_frac = mean[A < 0 and r > c]              (Ye et al. 2020's second clip binds)
    These describe the ratio whatever the loss (one name, one meaning). Also mean, min, max of r and
    the std (population) of log r. Empty input: {} (not computable -> absent).
    """
    if log_ratio.numel() == 0:
        return {}
    lr = log_ratio.to(F64)
    r = torch.exp(lr)
    a = adv.to(F64)
    low = ((r < 1.0 - eps_low) & (a < 0)).to(F64).mean()
    high = ((r > 1.0 + eps_high) & (a > 0)).to(F64).mean()
    return {"mean": float(r.mean()), "min": float(r.min()), "max": float(r.max()),
            "log_std": float(lr.std(correction=0)),
            "clip_frac_low": float(low), "clip_frac_high": float(high), "clip_frac": float(low + high),
            "dual_clip_frac": float(((a < 0) & (r > dual_clip_c)).to(F64).mean())}


def mismatch_stats(train_logp: Tensor, rollout_logp: Tensor) -> dict[str, float]:
    """Training-inference mismatch on the sampled tokens a ~ pi_rollout. train_logp, rollout_logp: [N].

    logp_abs_mean / logp_abs_max: mean and max of |log pi_train(a) - log pi_rollout(a)|;
    kl_k1, kl_k3: KL(pi_rollout || pi_train) estimated from the rollout's own samples (kl_sampled).
    Empty input: {}.
    """
    if train_logp.numel() == 0:
        return {}
    d = (train_logp.to(F64) - rollout_logp.to(F64))
    k = kl_sampled(rollout_logp, train_logp)
    return {"logp_abs_mean": float(d.abs().mean()), "logp_abs_max": float(d.abs().max()),
            "kl_k1": float(k["k1"].mean()), "kl_k3": float(k["k3"].mean())}


def cov_logp_adv(logp: Tensor, adv: Tensor) -> float:
    """Token-level Cov(log pi(a_t), A_t) = mean_t (logp_t - mean logp)(A_t - mean A) over the batch, float64.

    Cui et al. 2025, Lemma 1 / Theorem 1: under a (natural) policy-gradient step the entropy moves by
    about -eta Cov(log pi(a), A); a positive covariance drives entropy down. [N] -> float (NaN if N = 0).
    """
    x, y = logp.to(F64), adv.to(F64)
    return float(((x - x.mean()) * (y - y.mean())).mean())


def top_frac_weight(score: Tensor, weight: Tensor, frac: float = 0.2) -> Optional[float]:
    """Share of sum |weight| carried by the ceil(frac N) tokens with the largest `score`.

    With score = entropy and weight = c_t (= -d loss / d logp_t), it is how much of the update sits on
    the high-entropy "forking" tokens (Wang et al. 2025). Ties at the cut are broken by position
    (torch.topk), so exactly ceil(frac N) tokens count. None when sum |weight| = 0 (not computable).
    """
    n = score.numel()
    w = weight.to(F64).abs()
    total = w.sum()
    if n == 0 or total == 0:
        return None
    k = max(1, math.ceil(frac * n - 1e-9))
    top = torch.topk(score.to(F64), k, sorted=False).indices
    return float(w[top].sum() / total)


def pass_at_k(correct: Tensor, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 (eq. 1), averaged over groups.

    correct: [n_groups, n] 0/1, n samples per prompt, c correct: pass@k = 1 - C(n - c, k) / C(n, k)
    (the chance that k of the n samples, drawn without replacement, hold at least one correct one).
    Computed with log-gamma in float64; needs 1 <= k <= n.
    """
    n = correct.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= group size {n}, got k={k}")
    c = correct.to(F64).sum(-1)
    fail = n - c
    lg = torch.lgamma
    nn_ = torch.full_like(fail, float(n))
    log_ratio = lg(fail + 1) - lg(fail - k + 1) - lg(nn_ + 1) + lg(nn_ - k + 1)
    p_all_fail = torch.where(fail >= k, torch.exp(log_ratio.clamp(max=0.0)), torch.zeros_like(fail))
    return float((1.0 - p_all_fail).mean())


def advantage_stats(adv: Tensor, group_size: int) -> dict[str, float]:
    """Sequence advantages [S] (S = groups x group_size, groups contiguous): mean, std (population),
    abs_mean, and zero_frac = the fraction of groups whose advantages are all exactly 0 (no signal)."""
    a = adv.to(F64)
    groups = a.reshape(-1, group_size)
    return {"mean": float(a.mean()), "std": float(a.std(correction=0)), "abs_mean": float(a.abs().mean()),
            "zero_frac": float((groups == 0).all(-1).to(F64).mean())}


_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_EMBED = re.compile(r"(?:embed|(?:^|\.)wte\.|(?:^|\.)wpe\.)")
_HEAD = re.compile(r"(?:^|\.)(?:lm_head|head|output|embed_out)\.")


def param_group(name: str) -> str:
    """The group of a parameter name: 'layer{i}' (Llama `model.layers.i.`, GPT-2 `transformer.h.i.`),
    'embed', 'head' (the output projection), else 'other' (e.g. Llama's final `model.norm`)."""
    m = _LAYER.search(name)
    if m:
        return f"layer{int(m.group(1))}"
    if _EMBED.search(name):
        return "embed"
    if _HEAD.search("." + name):
        return "head"
    return "other"


def group_norms(tensors: list[Tensor], groups: list[str]) -> dict[str, float]:
    """L2 norm per group of a list of tensors (e.g. gradients) with their group labels; float64 sums.
    The norms' root-sum-square is the total norm."""
    sq: dict[str, float] = {}
    norms = torch.stack([torch.linalg.vector_norm(t, dtype=F64) for t in tensors]) if tensors else None
    if norms is None:
        return {}
    for g, v in zip(groups, (norms**2).tolist()):
        sq[g] = sq.get(g, 0.0) + v
    return {g: math.sqrt(v) for g, v in sq.items()}


def update_stats(before: Tensor, after: Tensor, lr: float) -> dict[str, float]:
    """Parameter update of a step from flat parameter vectors [P]: norm = ||after - before||,
    rel_norm = norm / ||before||, norm_over_lr = norm / lr and rms_over_lr = norm / (lr sqrt(P))
    (Adam's early steps move each weight by ~lr, so rms_over_lr ~ 1; absent when lr = 0)."""
    d = torch.linalg.vector_norm(after - before, dtype=F64)  # float32 difference: error ~1e-7 of d
    out = {"norm": float(d), "rel_norm": float(d / torch.linalg.vector_norm(before, dtype=F64))}
    if lr > 0:
        out["norm_over_lr"] = float(d) / lr
        out["rms_over_lr"] = float(d) / (lr * math.sqrt(before.numel()))
    return out

"""Loss-term audit: does each term of the loss push the logits the way its formula says?

In one TRL change the entropy bonus had no gradient at all (its entropies were computed under no_grad)
while the loss value and every metric looked right (huggingface/trl #5595). A value check cannot see
that; a gradient check can. For every term the trainer puts into the loss, on the first update of a
probed step, this probe measures

  measured  g_term = d term / d z, z the update's logits [s, R, V], by autograd through the trainer's
            own code path: `Trainer.loss` on a leaf copy of the logits, once with only the PG term on,
            once more per extra term (KL, entropy bonus); a term's gradient is the difference, since
            gradients add (exact up to float32 rounding of the sum).
  predicted the same gradient from the term's formula, written here independently in float64
            (functions `pred_*` below, each citing its formula). With w_t = d agg / d l_t the
            aggregation's token weight, e_a the one-hot of the sampled token, pi = softmax(z):
              pg             w_t rho_t (d l_t / d log pi(a_t)) (e_a - pi)   rho_t the correction weight
              kl (in loss)   beta w_t (d k / d log pi(a_t)) (e_a - pi)      k1: 1, k2: delta, k3: 1 - pi_ref/pi
                             beta w_t pi (log pi - log pi_ref - KL)         exact KL
              entropy_bonus  beta w_t pi (log pi + H)                       (the loss is -beta agg(H);
                                                                             dH/dz = -pi (log pi + H))
and writes per term (term in pg, kl, entropy_bonus; only terms that are on):

  loss_audit/<term>/rel_err         ||g_meas - g_pred|| / ||g_pred|| (0 when both are 0; ||g_meas|| when g_pred = 0)
  loss_audit/<term>/cos             cosine of g_meas and g_pred (absent when either is 0)
  loss_audit/<term>/grad_norm       ||g_meas|| at the logits;  loss_audit/<term>/grad_norm_pred  ||g_pred||
  loss_audit/<term>/param_grad_norm ||J^T g_meas|| at the parameters (one extra forward, one backward per term)
  loss_audit/total/param_rel_err    ||sum_terms J^T g_meas - grad_theta L|| / ||grad_theta L||, grad_theta L the
                                    trainer's own gradient (pre-clip): a term the trainer's backward lost or
                                    added outside `Trainer.loss` shows here
  loss_audit/reward_terms/abs_err_max  max_i |r_i - (correct_i - lambda len_i / budget - beta sum_t k(a_t))|:
                                    the terms that enter through the reward (length penalty, KL in reward) are
                                    checked by value; their gradient is the PG term's (through the advantage)

Names: this is the probe group `loss_terms` (probes.groups); its rows feed the `loss_terms` item of the
`solidrl audit` checklist (probes/audit.py `_loss_audit_items`: a term fails when rel_err > REL_TOL,
naming it and saying whether its contribution is zero, of the wrong sign or of the wrong magnitude),
which is why its keys are `loss_audit/*` and its schedule is `probes.audit_every` (the schedule of the
probes the audit reads: this one and probes/consistency.py). probes/probeset.py attaches it.

Left out: updates after the first of a step (mini-batches, epochs repeat the same code path), and
gradients through the correction weights (they are computed without gradient by design, algos.CORRECTIONS).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import torch
from torch import Tensor

from solidrl.trainer.loop import StepContext, Trainer
from solidrl.trainer.rollout import response_logits

__all__ = ["LossTermsProbe", "attach", "REL_TOL", "CONSISTENCY_TOL", "SAMPLER_OFFSET_TOL", "pred_pg", "pred_kl",
           "pred_entropy_bonus", "agg_weights", "pg_logp_coef", "kl_logp_coef"]

F64 = torch.float64
REL_TOL = 1e-3
"""Largest relative error of a term's measured logit gradient against its formula. The measured path is
float32 (the trainer's), the formula float64: agreement is ~1e-7 on the nano model (measured); a broken
term is off by O(1) (zero: 1, wrong sign: 2)."""
SAMPLER_OFFSET_TOL = 1e-3
"""nats: the same bar as the audit's mismatch item."""
CONSISTENCY_TOL = 1e-4
"""nats. Largest |log pi(a)| difference between recomputations of one batch under other micro-batch splits
and left paddings (probes/consistency.py). float32 matmuls of another batch shape may sum in another order:
on CPU (nano, 256 sequences) 0 on 25 of 26 steps and 5.6e-6 on one (measured), so 1e-4 leaves a 20x margin;
a real bug (a wrong position id, an attention mask off by one) is >= 1e-2."""


# ----------------------------------------------------------------------------------------------
# Predicted gradients: closed forms, float64, independent of trainer/algos.py
# ----------------------------------------------------------------------------------------------

def agg_weights(agg: str, mask: Tensor, norm_const: float) -> Tensor:
    """w_{b,t} = d L / d l_{b,t} of the aggregation L = agg(l, mask): [B, T].

    token-mean  m / sum m;  seq-mean-token-mean  m / (B sum_t m);  seq-mean-token-sum  m / B;
    seq-mean-token-sum-norm  m / (B C). Empty rows / batches weigh 0.
    """
    m = mask.to(F64)
    B = m.shape[0]
    if agg == "token-mean":
        return m / m.sum() if m.sum() > 0 else torch.zeros_like(m)
    if agg == "seq-mean-token-mean":
        n = m.sum(-1, keepdim=True)
        return torch.where(n > 0, m / n.clamp(min=1), torch.zeros_like(m)) / B
    if agg == "seq-mean-token-sum":
        return m / B
    if agg == "seq-mean-token-sum-norm":
        return m / (B * norm_const)
    raise KeyError(f"no closed form for loss aggregation {agg!r}")


def pg_logp_coef(loss: str, logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor,
                 eps_low: float, eps_high: float, dual_c: float) -> Tensor:
    """d l_t / d log pi(a_t) of the per-token policy loss l_t: [B, T].

    vanilla: -A.  ppo_clip: -A r where the unclipped branch is the active max (r within [1-eps_low, 1+eps_high],
    or r beyond it on the side where clipping does not bind), else 0 (Schulman et al. 2017, eq. 7).
    dual_clip: also 0 where A < 0 and r > c (Ye et al. 2020, eq. 5). seq_ratio: -s_b A with the clip decided
    on the sequence ratio s_b = exp(mean_t log r_t) (Zheng et al. 2025, GSPO-token, sec. 4.3).
    """
    adv = adv.to(F64)
    if loss == "vanilla":
        return -adv
    lr = logp.to(F64) - old_logp.to(F64)
    if loss == "seq_ratio":
        m = mask.to(F64)
        n = m.sum(-1, keepdim=True)
        lr = torch.where(n > 0, (lr * m).sum(-1, keepdim=True) / n.clamp(min=1), torch.zeros_like(n)).expand_as(lr)
    r = torch.exp(lr)
    inside = (r >= 1 - eps_low) & (r <= 1 + eps_high)
    free = inside | ((adv > 0) & (r < 1 - eps_low)) | ((adv < 0) & (r > 1 + eps_high))
    if loss == "dual_clip":
        free = free & ~((adv < 0) & (r > dual_c))
    elif loss not in ("ppo_clip", "seq_ratio"):
        raise KeyError(f"no closed form for policy loss {loss!r}")
    return torch.where(free, -adv * r, torch.zeros_like(r))


def kl_logp_coef(est: str, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """d k_t / d log pi(a_t), delta = log pi(a) - log pi_ref(a) (Schulman 2020, "Approximating KL"):
    k1 = delta -> 1;  k2 = delta^2 / 2 -> delta;  k3 = e^{-delta} - 1 + delta -> 1 - e^{-delta} = 1 - pi_ref/pi."""
    d = logp.to(F64) - ref_logp.to(F64)
    if est == "k1":
        return torch.ones_like(d)
    if est == "k2":
        return d
    if est == "k3":
        return -torch.expm1(-d)
    raise KeyError(f"no sampled-token closed form for KL estimator {est!r}")


def _through_softmax(coef: Tensor, z: Tensor, ids: Tensor) -> Tensor:
    """coef_t (e_{a_t} - pi_t): the logit gradient of a function of log pi(a_t) with slope coef_t. [B,T,V]."""
    p = torch.softmax(z.to(F64), -1)
    onehot = torch.zeros_like(p).scatter_(-1, ids.unsqueeze(-1), 1.0)
    return coef.unsqueeze(-1) * (onehot - p)


def pred_pg(z, ids, old_logp, adv, mask, weights, agg, norm_const, loss, eps_low, eps_high, dual_c) -> Tensor:
    """d/dz of agg(rho_t l_t): w_t rho_t (d l_t / d log pi(a_t)) (e_a - pi). z [B,T,V], others [B,T]."""
    logp = torch.log_softmax(z.to(F64), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    coef = pg_logp_coef(loss, logp, old_logp, adv, mask, eps_low, eps_high, dual_c)
    return _through_softmax(agg_weights(agg, mask, norm_const) * weights.to(F64) * coef, z, ids)


def pred_kl(z, ids, ref_z, mask, agg, norm_const, est, beta) -> Tensor:
    """d/dz of beta agg(k_t). Sampled estimators: beta w_t (d k / d log pi(a_t)) (e_a - pi). Exact KL:
    d/dz_v sum_u pi_u (log pi_u - log pi_ref_u) = pi_v (log pi_v - log pi_ref_v - KL)."""
    w = beta * agg_weights(agg, mask, norm_const)
    lp, lr = torch.log_softmax(z.to(F64), -1), torch.log_softmax(ref_z.to(F64), -1)
    if est == "exact":
        p = lp.exp()
        diff = lp - lr
        kl = (p * diff).sum(-1, keepdim=True)
        return w.unsqueeze(-1) * p * (diff - kl)
    g = lambda x: x.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    return _through_softmax(w * kl_logp_coef(est, g(lp), g(lr)), z, ids)


def pred_entropy_bonus(z, mask, agg, norm_const, beta) -> Tensor:
    """d/dz of -beta agg(H_t): beta w_t pi (log pi + H), since dH/dz_v = -pi_v (log pi_v + H)."""
    lp = torch.log_softmax(z.to(F64), -1)
    p = lp.exp()
    h = -(p * lp).sum(-1, keepdim=True)
    return beta * agg_weights(agg, mask, norm_const).unsqueeze(-1) * p * (lp + h)


# ----------------------------------------------------------------------------------------------
# Measured gradients: the trainer's own Trainer.loss, one term at a time
# ----------------------------------------------------------------------------------------------

def measured_grads(trainer: Trainer, ctx: StepContext) -> dict[str, Tensor]:
    """term -> d term / d z [s, R, V] through `trainer.loss` on a leaf copy of the update's logits."""
    a = ctx.cfg.algo
    ids = ctx.rollout.response_ids[ctx.index]

    def grad(**algo_over) -> Tensor:
        leaf = ctx.logits.detach().clone().requires_grad_(True)
        cfg = dataclasses.replace(ctx.cfg, algo=dataclasses.replace(a, **algo_over))
        with torch.enable_grad():
            logp = trainer._policy_logp(leaf, ids)
            loss, _ = trainer.loss(leaf, logp, ctx, ctx.index, cfg)
            g, = torch.autograd.grad(loss, leaf, allow_unused=True)
        return torch.zeros_like(leaf) if g is None else g.detach()

    out = {"pg": grad(kl_coef=0.0, entropy_coef=0.0)}
    if a.kl_coef > 0 and a.kl_placement == "loss":
        out["kl"] = grad(entropy_coef=0.0) - out["pg"]
    if a.entropy_coef > 0:
        out["entropy_bonus"] = grad(kl_coef=0.0) - out["pg"]
    return out


def predicted_grads(trainer: Trainer, ctx: StepContext) -> dict[str, Tensor]:
    a, idx = ctx.cfg.algo, ctx.index
    z, ids, mask = ctx.logits, ctx.rollout.response_ids[idx], ctx.mask[idx]
    C = float(trainer.budget)
    out = {}
    if a.policy_loss in ("vanilla", "ppo_clip", "dual_clip", "seq_ratio"):  # the peer losses have no closed form here: absent
        out["pg"] = pred_pg(z, ids, ctx.old_logp[idx], ctx.advantages[idx][:, None].expand_as(mask), mask,
                            ctx.weights[idx], a.loss_agg, C, a.policy_loss, a.eps_low, a.eps_high, a.dual_clip_c)
    if a.kl_coef > 0 and a.kl_placement == "loss":
        out["kl"] = pred_kl(z, ids, ctx.ref_logits[idx], mask, a.loss_agg, C, a.kl_estimator, a.kl_coef)
    if a.entropy_coef > 0:
        out["entropy_bonus"] = pred_entropy_bonus(z, mask, a.loss_agg, C, a.entropy_coef)
    return out


def compare(meas: Tensor, pred: Tensor) -> dict[str, float]:
    """rel_err, cos, grad_norm, grad_norm_pred of two gradients (cos absent when either is 0)."""
    m, p = meas.to(F64).reshape(-1), pred.to(F64).reshape(-1)
    nm, np_ = float(m.norm()), float(p.norm())
    diff = float((m - p).norm())
    out = {"rel_err": diff / np_ if np_ > 0 else nm, "grad_norm": nm, "grad_norm_pred": np_}
    if nm > 0 and np_ > 0:
        out["cos"] = float(m @ p) / (nm * np_)
    return out


def _reward_err(trainer: Trainer, ctx: StepContext) -> Optional[float]:
    """max_i |r_i - (correct_i - lambda len_i / budget - beta sum_t k_t)|, when a reward term is on."""
    a = ctx.cfg.algo
    kl_in_reward = a.kl_coef > 0 and a.kl_placement == "reward"
    if not a.length_penalty and not kl_in_reward:
        return None
    ro = ctx.rollout
    want = ctx.correct.to(F64) - a.length_penalty * ro.lengths.to(F64) / trainer.budget
    if kl_in_reward:
        lp = torch.log_softmax(ctx.old_logits.to(F64), -1)
        lr = torch.log_softmax(ctx.ref_logits.to(F64), -1)
        if a.kl_estimator == "exact":
            k = (lp.exp() * (lp - lr)).sum(-1)
        else:
            g = lambda x: x.gather(-1, ro.response_ids.unsqueeze(-1)).squeeze(-1)  # noqa: E731
            d = g(lp) - g(lr)
            k = {"k1": d, "k2": 0.5 * d * d, "k3": torch.expm1(-d) + d}[a.kl_estimator]
        want = want - a.kl_coef * (k * ro.response_mask.to(F64)).sum(-1)
    return float((ctx.rewards.to(F64) - want).abs().max())


class LossTermsProbe:
    """Hooks: after_backward (first update of a probed step) measures; step_end writes the row."""

    def __init__(self, trainer: Trainer, every: int = 1, params: bool = True):
        self.trainer = trainer
        self.every = max(1, every)
        self.params = params
        self._row: dict[str, Any] = {}

    def attach(self) -> "LossTermsProbe":
        self.trainer.add_hook("after_backward", self.after_backward)
        self.trainer.add_hook("step_end", self.step_end)
        return self

    def after_backward(self, ctx: StepContext) -> None:
        if ctx.update != 0 or ctx.step % self.every:
            return
        t = self.trainer
        meas = measured_grads(t, ctx)
        try:
            pred = predicted_grads(t, ctx)
        except KeyError:  # a plugin's loss, aggregation or KL estimator has no closed form here: not audited
            pred = {}
        row: dict[str, Any] = {}
        for term in meas:
            if term in pred:
                row.update({f"loss_audit/{term}/{k}": v for k, v in compare(meas[term], pred[term]).items()})
        if self.params:
            row.update(self._param_norms(ctx, meas))
        try:
            err = _reward_err(t, ctx)
        except KeyError:  # a plugin KL estimator in the reward: no closed form to hold it against
            err = None
        if err is not None:
            row["loss_audit/reward_terms/abs_err_max"] = err
        self._row = row

    def _param_norms(self, ctx: StepContext, meas: dict[str, Tensor]) -> dict[str, float]:
        model = self.trainer.model
        params = [q for q in model.parameters() if q.requires_grad]
        with torch.enable_grad():
            z = response_logits(model, ctx.rollout.select(ctx.index)).float()
            out: dict[str, float] = {}
            total = None
            for term, g in meas.items():
                gp = torch.autograd.grad(z, params, grad_outputs=g.to(z.dtype), retain_graph=True, allow_unused=True)
                gp = [torch.zeros_like(q) if x is None else x for q, x in zip(params, gp)]
                out[f"loss_audit/{term}/param_grad_norm"] = float(torch.sqrt(sum((x.to(F64) ** 2).sum() for x in gp)))
                total = gp if total is None else [u + v for u, v in zip(total, gp)]
        clip = ctx.cfg.optim.grad_clip
        scale = min(1.0, clip / (ctx.grad_norm + 1e-6)) if clip > 0 else 1.0  # clip_grad_norm_ ran before the hook
        actual = [(q.grad if q.grad is not None else torch.zeros_like(q)).to(F64) / scale for q in params]
        diff = math.sqrt(sum(float(((u.to(F64) - v) ** 2).sum()) for u, v in zip(total, actual)))
        ref = math.sqrt(sum(float((v ** 2).sum()) for v in actual))
        out["loss_audit/total/param_rel_err"] = diff / ref if ref > 0 else diff
        return out

    def step_end(self, ctx: StepContext) -> None:
        ctx.metrics.update(self._row)
        self._row = {}


def attach(trainer: Trainer, every: int | None = None, params: bool = True) -> LossTermsProbe:
    """Attach once per trainer (a second call returns the first); every defaults to probes.audit_every."""
    every = trainer.cfg.probes.audit_every if every is None else every
    probe = getattr(trainer, "_loss_audit", None)
    if probe is None:
        probe = LossTermsProbe(trainer, every, params).attach()
        trainer._loss_audit = probe
    return probe

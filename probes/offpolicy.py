"""Off-policy probes: the rollout ratio pi_old / pi_rollout, what a correction did to it, and token lags.

The recorder's `ratio/*` measure the loss's ratio pi / pi_old; with one update per step that is 1 even
under staleness, because the trainer recomputes pi_old. Staleness, partial rollouts and low-precision
or noisy sampling show in the *rollout* ratio rho_t = pi_old(a_t) / pi_rollout(a_t), the one the
corrections (TIS, IcePop, masked IS) reweigh by. This hook measures it, per step, over the loss tokens:

  rollout_ratio/log_mean, log_var    mean and population variance of x_t = log pi_old(a_t) - log pi_rollout(a_t)
  rollout_ratio/mean, var, min, max  of rho_t = exp(x_t), raw (before any correction)
  rollout_ratio/clip_frac            TRL's clip fraction of rho_t with the config's eps: what PPO's clip would
                                     do if pi_old were the rollout's log-probs (verl's "bypass" mode)
  correction/touched_frac            tokens whose weight != rho_t (truncated or masked), over loss tokens;
  correction/weight_mean, _var, _max the weights w_t applied; all four only when offpolicy.correction != none
  offpolicy/version_lag_mean, _max   lag of each token in optimizer updates: version of pi_old - token_version
  mismatch/fresh_logp_abs_max        max |x_t| over response tokens with lag 0: numerics alone, no staleness
                                     (absent when no token is fresh)
and beside them the theory's predictions:
  pred/clip_frac/rollout_ratio/clip_frac   theory.predictors `clip_frac` on this batch's (x_t, A_t)
  pred/ratio_decomposition/rollout_ratio/log_var
        the staleness spread of derive_ratio_decomposition, s_j^2 = 2 kl/step_j per step of lag, summed over
        the steps a token lags (independent steps: Var of a sum of uncorrelated terms), mean over tokens
  pred/ratio_decomposition_coherent/rollout_ratio/log_var
        (sum_j s_j)^2: perfectly aligned steps, the upper bound (the std of a sum is at most the sum of stds)
  kl/step    written only when the recorder did not (same definition: exact KL(pi_old || pi_new), token mean)

The probe group `offpolicy` (probes.groups), predictions included; probes/probeset.py attaches it
after the recorder. It runs every step, whatever probes.every: the lag predictions need every step's kl/step.

Left out: sequence-level ratio statistics (masked_seq_is's per-sequence geometric means), and the
loss's own clip fraction (the recorder's `ratio/clip_frac`).
References: Zheng et al. 2025, MiniRL (arXiv 2512.01374) sec. 2-3 (the two factors of the ratio);
volcengine/verl `rollout_corr_helper.py` (rollout IS / rejection metrics).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

import sympy as sp

from solidrl.theory.offpolicy import derive_ratio_decomposition
from solidrl.theory.predictors import PREDICTORS
from solidrl.trainer import algos
from solidrl.trainer.loop import StepContext, Trainer
from solidrl.trainer.rollout import response_logits

from . import metrics as M
from .recorder import run_scalars

__all__ = ["OffPolicyProbe", "attach"]

F64 = torch.float64


def _spread_fn() -> Optional[Callable[[float], float]]:
    """kl_step -> s, the per-step std of the log-ratio from theory.offpolicy.derive_ratio_decomposition."""
    d = derive_ratio_decomposition()
    return sp.lambdify(d.symbols["kl_step"], d.result["ratio/log_std"], "math")


def _clip_frac_predictor():
    return PREDICTORS.get("clip_frac")


class OffPolicyProbe:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.kl_at: dict[int, float] = {}  # version of pi_old at a step's start -> that step's kl/step
        self.spread = _spread_fn()
        self.clip_pred = _clip_frac_predictor()
        self._row: dict[str, Any] = {}
        # A resumed run: rebuild kl_at from the rows it keeps. Step s starts at version s x updates_per_step
        # (the trainer's version counts optimizer updates), so the lagged steps' spreads are known again.
        ups = trainer.cfg.updates_per_step
        for r in getattr(trainer, "resumed_rows", ()):
            kl = r.get("kl/step")
            if isinstance(kl, float) and math.isfinite(kl):
                self.kl_at[r["step"] * ups] = kl

    def attach(self) -> "OffPolicyProbe":
        self.trainer.add_hook("after_rollout", self.after_rollout)
        self.trainer.add_hook("step_end", self.step_end)
        return self

    @torch.no_grad()
    def after_rollout(self, ctx: StepContext) -> None:
        cfg, ro = ctx.cfg, ctx.rollout
        loss = ctx.mask > 0
        x_all = ctx.old_logp.to(F64) - ro.rollout_logp.to(F64)  # [S, R]
        row: dict[str, Any] = {}
        x, adv = x_all[loss], ctx.advantages[:, None].expand_as(loss)[loss]
        if x.numel():
            rho = torch.exp(x)
            row.update({"rollout_ratio/log_mean": float(x.mean()), "rollout_ratio/log_var": float(x.var(correction=0)),
                        "rollout_ratio/mean": float(rho.mean()), "rollout_ratio/var": float(rho.var(correction=0)),
                        "rollout_ratio/min": float(rho.min()), "rollout_ratio/max": float(rho.max())})
            rs = M.ratio_stats(x, adv, cfg.algo.eps_low, cfg.algo.eps_high, cfg.algo.dual_clip_c)
            row["rollout_ratio/clip_frac"] = rs["clip_frac"]
            if self.clip_pred is not None:
                pred = self.clip_pred({"log_ratio": x, "adv": adv.to(F64), **run_scalars(cfg)})
                if "ratio/clip_frac" in pred:
                    row["pred/clip_frac/rollout_ratio/clip_frac"] = pred["ratio/clip_frac"]
            name = cfg.offpolicy.correction
            if name != "none":
                w = ctx.weights[loss].to(F64)
                hit = algos.touched(name, x_all.to(ro.rollout_logp.dtype), ctx.mask, ctx.corr_params,
                                    **ctx.cfg.entry_params("offpolicy.correction"))
                row.update({"correction/touched_frac": float(hit[loss].to(F64).mean()),
                            "correction/weight_mean": float(w.mean()), "correction/weight_var": float(w.var(correction=0)),
                            "correction/weight_max": float(w.max())})
        tv = ctx.token_version
        if tv is not None and loss.any():
            lag = ctx.version - tv
            row["offpolicy/version_lag_mean"] = float(lag[loss].to(F64).mean())
            row["offpolicy/version_lag_max"] = int(lag[loss].max())
            fresh = (lag == 0) & (ro.response_mask > 0)
            if fresh.any():
                row["mismatch/fresh_logp_abs_max"] = float(x_all[fresh].abs().max())
            row.update(self._predicted_spread(tv[loss], ctx.version, cfg.updates_per_step))
        self._row = row

    def _predicted_spread(self, token_version: torch.Tensor, version: int, per_step: int) -> dict[str, float]:
        """Mean over tokens of the predicted Var(x_t) from the kl/step of the steps each token lags.

        A step starting at version u moves the policy to u + per_step; a token sampled by version v lags
        the steps starting at v, v + per_step, ..., version - per_step.
        """
        if self.spread is None:
            return {}
        indep, coherent = [], []
        for v, n in zip(*torch.unique(token_version, return_counts=True)):
            steps = list(range(int(v), version, per_step))
            if any(u not in self.kl_at for u in steps):
                return {}  # a lagged step's kl/step is unknown (a resumed run): not computable
            s = [float(self.spread(self.kl_at[u])) for u in steps]
            indep.append((sum(si**2 for si in s), int(n)))
            coherent.append((sum(s) ** 2, int(n)))
        total = sum(n for _, n in indep)
        return {"pred/ratio_decomposition/rollout_ratio/log_var": sum(a * n for a, n in indep) / total,
                "pred/ratio_decomposition_coherent/rollout_ratio/log_var": sum(a * n for a, n in coherent) / total}

    @torch.no_grad()
    def step_end(self, ctx: StepContext) -> None:
        row = ctx.metrics
        row.update(self._row)
        self._row = {}
        if "kl/step" not in row:
            sel = ctx.rollout.response_mask > 0
            new = response_logits(ctx.model, ctx.rollout)[sel]
            if torch.isfinite(new).all():
                row["kl/step"] = float(M.kl_exact(ctx.old_logits[sel], new).mean())
        kl = row.get("kl/step")
        if isinstance(kl, float) and math.isfinite(kl):
            self.kl_at[ctx.version] = kl


def attach(trainer: Trainer) -> OffPolicyProbe:
    """Attach once per trainer (a second call returns the first probe). Attach after the recorder, so
    its kl/step is reused rather than recomputed."""
    probe = getattr(trainer, "_offpolicy_probe", None)
    if probe is None:
        probe = OffPolicyProbe(trainer).attach()
        trainer._offpolicy_probe = probe
    return probe

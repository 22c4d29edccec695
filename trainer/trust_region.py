"""A KL trust region on every optimizer update: scale the proposed step so its KL(pi_old || pi_new) is delta.

TRPO's step is a KL constraint, max_dtheta L(dtheta) s.t. KL(pi_old || pi_new) <= delta (Schulman et al. 2015,
eq. 12-14); PPO's KL loss is only a regularizer whose kl/step follows from its coefficient. Here the
optimizer (AdamW, SGD) proposes dtheta as usual, and the step taken is s* dtheta with s* chosen so that

    KL(s) = mean_t KL(pi_old(. | s_t) || pi_{theta + s dtheta}(. | s_t)) = delta   (the response tokens of the update)

  optim.trust_region_mode = "predict"      KL(s) from theory.kernel.derive_jvp2: the logits expanded to second
                                           order along dtheta (one forward-over-forward pass at theta, dz1 and
                                           dz2), the exact KL on z + s dz1 + s^2/2 dz2. Solving for s costs no
                                           forward: only softmaxes of [N, V].
  optim.trust_region_mode = "line_search"  KL(s) exact: one no-grad forward of theta + s dtheta per trial s
                                           (the comparison: what the prediction saves).

The solve is the fixed point s <- s sqrt(delta / KL(s)) (KL ~ c s^2 near 0, so it is Newton's step in log s
for a quadratic KL), from s = 1, at most MAX_ITERS trials, stopping at |KL(s)/delta - 1| < TOL; s is capped at
optim.trust_region_max_scale (a step is never grown further than that: the expansion is local).
Logged per step (mean over the step's updates): trust_region/scale (s*), trust_region/kl_pred (KL(s*) as the
mode computed it), trust_region/iters.

Where: Trainer calls `rescale(batch)` right after `optimizer.step()`; the parameters before the step are
the snapshot the loop takes right before `optimizer.step()` (`snapshot()`). A counterfactual step
(Trainer.counterfactual_step) runs with the trainer's own trust-region setting. Adam's moments stay as
the optimizer updated them; only the parameters move back along dtheta.
Left out: a constraint on anything but the mean token KL (TRPO's max-KL variant), and multi-update steps
are constrained per update (each update's KL from the policy before it), not over the whole step.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from solidrl.theory.kernel import expanded_stats, jvp2_logit_change

__all__ = ["TrustRegion", "attach", "MODES", "solve_scale"]

MODES = ("predict", "line_search")
MAX_ITERS = 30
TOL = 1e-4


def solve_scale(kl_of, delta: float, max_scale: float, iters: int = MAX_ITERS, tol: float = TOL) -> tuple[float, float, int]:
    """(s, KL(s), trials): s in (0, max_scale] with KL(s) = delta, by s <- s sqrt(delta / KL(s)) from s = 1.

    kl_of: s -> KL(s) (float). Stops at |KL/delta - 1| < tol, at the cap (KL(max_scale) < delta: the step
    is grown to the cap), or after `iters` trials (the last s is returned). KL(s) = 0 (no step) gives s = 1.
    """
    s, kl = min(1.0, max_scale), float(kl_of(min(1.0, max_scale)))
    n = 1
    while n < iters and kl > 0 and math.isfinite(kl) and abs(kl / delta - 1) >= tol:
        nxt = min(max_scale, s * math.sqrt(delta / kl))
        if nxt == s:  # at the cap and still below delta
            break
        s, kl = nxt, float(kl_of(nxt))
        n += 1
    return s, kl, n


class TrustRegion:
    """Rescales each optimizer update to KL(pi_old || pi_new) = delta (module docstring)."""

    def __init__(self, model: torch.nn.Module, delta: float, mode: str, max_scale: float):
        self.model, self.delta, self.mode, self.max_scale = model, delta, mode, max_scale
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.before: Optional[dict[str, Tensor]] = None
        self.rows: list[dict[str, float]] = []

    def snapshot(self) -> None:
        """The parameters before the optimizer's step (the loop calls it right before opt.step())."""
        self.before = {n: p.detach().clone() for n, p in self.named}


    def _set(self, s: float, delta: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(self.before[n] + s * delta[n])

    @torch.no_grad()
    def rescale(self, ro) -> dict[str, float]:
        """After optimizer.step(): move the parameters to theta_before + s* dtheta; returns the logged values."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if self.before is None:
            raise RuntimeError("trust region: no parameter snapshot (snapshot() was not called before the step)")
        delta = {n: p.detach() - self.before[n] for n, p in self.named}
        ids, mask, pos, rows = ro.full_inputs()
        if self.mode == "predict":
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):  # forward AD: no fused CPU SDPA
                logits, dz1, dz2 = jvp2_logit_change(self.model, ids, mask, pos, delta, rows, params=self.before)

            def kl_of(s: float) -> float:
                return float(expanded_stats(logits, dz1, dz2, s)["jvp2_kl"].mean())
        else:
            self._set(0.0, delta)
            l0 = torch.log_softmax(self._logits(ids, mask, pos, rows), -1)

            def kl_of(s: float) -> float:
                self._set(s, delta)
                l1 = torch.log_softmax(self._logits(ids, mask, pos, rows), -1)
                return float((l0.exp() * (l0 - l1)).sum(-1).mean())
        s, kl, n = solve_scale(kl_of, self.delta, self.max_scale)
        self._set(s, delta)
        self.before = None
        out = {"trust_region/scale": s, "trust_region/kl_pred": kl, "trust_region/iters": float(n)}
        self.rows.append(out)
        return out

    def _logits(self, ids: Tensor, mask: Tensor, pos: Tensor, rows: Tensor) -> Tensor:
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[rows].double()

    def step_end(self, ctx) -> None:
        """Write the step's mean over its updates into the row (a trainer hook, registered first)."""
        if self.rows:
            for k in self.rows[0]:
                ctx.metrics[k] = sum(r[k] for r in self.rows) / len(self.rows)
        self.rows = []


def attach(trainer: Any) -> Optional[TrustRegion]:
    """A TrustRegion for trainer.cfg.optim.trust_region_kl > 0 (its step_end hook added), else None."""
    o = trainer.cfg.optim
    if not o.trust_region_kl > 0:
        return None
    tr = TrustRegion(trainer.model, o.trust_region_kl, o.trust_region_mode, o.trust_region_max_scale)
    trainer.add_hook("step_end", tr.step_end)
    return tr

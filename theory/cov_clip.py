"""What Clip-Cov and KL-Cov do to the entropy change: which tokens they touch, and the dH they remove.

Derivation (pairs with the predictor function `clip_cov_entropy` below):
  clip_cov   the batch estimate of Cui et al.'s law, dH = -lr 1/N sum_t (l_t - lbar)(c_t - cbar), with the
             coefficients of a token set S cut to 0, is exactly dH_full + lr/N sum_{t in S} (l_t - lbar) c_t.

Clip-Cov (Cui et al. 2025, sec. 5.2) cuts the gradient of a few tokens whose covariance
cov_t = (A_t - Abar)(l_t - lbar) lies in (lb, ub); cov_t > lb > 0, so each cut token carried a term
-lr (l_t - lbar) c_t / N of the entropy DROP, and cutting it gives that entropy back. KL-Cov adds
kl_coef |log r_t| on the top-k covariance tokens: at r = 1 (the first, on-policy update) its
gradient is 0 (the subgradient torch takes at 0), so on that update it changes neither dH nor anything
else; it acts only once the ratio has moved (later mini-batches / epochs), pulling r_t back to 1.

Left out: the change of the other tokens' ratios during a multi-step update, and the kernel's cross-talk
(a cut token still moves through shared parameters: theory.kernel). Source: Cui et al. 2025, "The Entropy
Mechanism of Reinforcement Learning for Reasoning Language Models" (arXiv 2505.22617), sec. 4 (the
Cov-based estimator) and sec. 5.2 (Clip-Cov, KL-Cov).
"""
from __future__ import annotations

import math

import sympy as sp
import torch
from torch import Tensor

from solidrl.theory.derivation import STAT, Derivation

__all__ = ["derive_clip_cov", "clip_cov_candidates", "expected_cut", "clip_cov_entropy"]

_lr = STAT["lr"]


def derive_clip_cov(N: int = 4) -> Derivation:
    """Cutting the coefficients of a set S of tokens shifts the batch-estimate dH by +lr/N sum_S (l_t - lbar) c_t.

    With s_t in {0, 1} marking the cut tokens and x_t = c_t (1 - s_t):
      dH_cut = -lr 1/N sum_t (l_t - lbar)(x_t - xbar) = -lr 1/N sum_t (l_t - lbar) x_t        (sum (l - lbar) = 0)
             = dH_full + lr 1/N sum_t s_t (l_t - lbar) c_t.
    With c_t = A_t w (a token-mean step, w = 1/N_tok): (l_t - lbar) c_t = w (cov_t + Abar (l_t - lbar)), so each
    cut Clip-Cov candidate (cov_t > lb > 0, Abar ~ 0 under group baselines) raises dH. Exact for the estimator,
    no expansion. Result in logp_1..N, coef_1..N, cut_1..N (0/1) and lr.
    Source: Cui et al. 2025 (arXiv 2505.22617), sec. 4 and 5.2.
    """
    l = sp.symbols(f"logp_1:{N + 1}", real=True)
    c = sp.symbols(f"coef_1:{N + 1}", real=True)
    s = sp.symbols(f"cut_1:{N + 1}", real=True)
    lbar = sum(l) / N
    x = [ci * (1 - si) for ci, si in zip(c, s)]
    xbar = sum(x) / N
    cbar = sum(c) / N
    dh_cut = -_lr * sum((li - lbar) * (xi - xbar) for li, xi in zip(l, x)) / N
    dh_full = -_lr * sum((li - lbar) * (ci - cbar) for li, ci in zip(l, c)) / N
    shift = _lr * sum(si * (li - lbar) * ci for si, li, ci in zip(s, l, c)) / N
    return Derivation(
        name="clip_cov",
        statement=sp.Eq(sp.Symbol(r"\Delta H_{cut}"), sp.Symbol(r"\Delta H") + _lr / N * sp.Symbol(
            r"\sum_{t \in S} (l_t - \bar l) c_t")),
        steps=(("coefficients after the cut", sp.Eq(sp.Symbol("x_t"), sp.Symbol("c_t") * (1 - sp.Symbol("s_t")))),
               ("batch estimate with x", sp.Eq(sp.Symbol(r"\Delta H_{cut}"), dh_cut))),
        result={"entropy/delta": dh_cut},
        residuals={"dH_cut = dH_full + lr/N sum_S (l - lbar) c": sp.expand(dh_cut - dh_full - shift)},
        source="Cui et al. 2025, sec. 4 (Cov estimator) and sec. 5.2 (Clip-Cov)",
        symbols={str(v): v for v in (*l, *c, *s)},
    )


def clip_cov_candidates(logp: Tensor, adv: Tensor, lb: float, ub: float) -> Tensor:
    """Bool [N]: tokens with lb < cov_t < ub, cov_t = (A_t - mean A)(l_t - mean l) over the N tokens.

    On an on-policy update no token is PPO-clipped (r = 1), so these are exactly Clip-Cov's candidates.
    """
    cov = (adv - adv.mean()) * (logp - logp.mean())
    return (cov > lb) & (cov < ub)


def expected_cut(logp: Tensor, adv: Tensor, ratio: float, lb: float, ub: float) -> Tensor:
    """[N] float: P(token t is cut) = min(n, K)/K on the K candidates, n = max(floor(ratio N), 1); 0 elsewhere."""
    cand = clip_cov_candidates(logp, adv, lb, ub)
    K = int(cand.sum())
    if K == 0:
        return torch.zeros_like(logp)
    n = max(int(math.floor(ratio * logp.numel())), 1)
    return cand.double() * (min(n, K) / K)


def clip_cov_entropy(stats, ratio: float = 2e-4, lb: float = 1.0, ub: float = 5.0) -> dict[str, float]:
    """Clip-Cov's entropy change: the batch Cov estimate with the cut tokens' coefficients set to 0.

    entropy/delta = -lr 1/N sum_t (l_t - lbar)(x_t - xbar), x_t = c_t (1 - q_t), q_t = P(t is cut) =
    min(n, K)/K on the K tokens with lb < cov_t < ub (cov_t = (A_t - Abar)(l_t - lbar)), n = max(floor(ratio N), 1).
    Exact (derive_clip_cov) when every candidate is cut (n >= K); an expectation over the uniform draw
    otherwise. `coef` must be the step's coefficients WITHOUT the cut (a ppo_clip step on the same batch);
    on the first, on-policy update no token is PPO-clipped, so the candidates are the covariance band alone.
    The predicted cut fraction is expected_cut(...).mean(). Defaults are
    trainer.algos.clip_cov's (Cui et al. 2025: r = 2e-4, (1, 5)). stats: logp, adv, coef [N]; lr (docs/contracts.md).
    Written as a predictor (fn(stats) -> dict) but not registered in theory/predictors.PREDICTORS yet
    (the registry's convention test needs a notebook section and this module in its list).
    """
    logp, adv, c = (torch.as_tensor(stats[k]).double() for k in ("logp", "adv", "coef"))
    lr = torch.as_tensor(stats["lr"]).double()
    if not logp.numel():
        return {}
    x = c * (1 - expected_cut(logp, adv, ratio, lb, ub))
    return {"entropy/delta": float((-lr * (logp - logp.mean()) * (x - x.mean())).mean())}

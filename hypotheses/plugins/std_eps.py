"""Worked example of a plugin (docs/plugins.md): the advantage (r - mean) / (std + eps) and its predictor.

Idea 4 of issue 15: GRPO divides the group-centred reward by std + 1e-6; a larger eps damps the
groups whose std is small, so it shrinks the gradient by a factor that the groups' reward spreads
alone predict. Three parts, each registered with a public decorator:

  std_eps                          advantage estimator, parameter eps (float, default 0.1)
  derive_std_eps_gradnorm_ratio    its sympy derivation: ||g_std_eps|| / ||g_grpo|| from the group stds
  std_eps_gradnorm_ratio           the predictor compiled from that derivation, parameter eps

Used by hypotheses/plugins/std_eps.toml (`plugins = ["std_eps.py"]`), or on any command:
    solidrl train --plugin hypotheses/plugins/std_eps.py --set algo.advantage=std_eps --set algo.advantage.eps=0.2 ...
"""
from __future__ import annotations

from functools import cache

import sympy as sp
import torch
from torch import Tensor

from solidrl.theory.derivation import Derivation
from solidrl.theory.predictors import need, predictor
from solidrl.trainer.algos import GRPO_STD_EPS  # the epsilon of the GRPO it is compared with
from solidrl.trainer.algos import advantage


@advantage("std_eps")
def std_eps(rewards: Tensor, *, eps: float = 0.1) -> Tensor:
    """A_{n,i} = (r_{n,i} - mean_g r_n) / (std_g r_n + eps), std the population std; 0 in an all-equal group.

    rewards: [N prompts, G samples] -> [N, G]. eps = 1e-6 is the trainer's GRPO exactly.
    Source: Shao et al. 2024, DeepSeekMath, sec. 4.1.2 (GRPO), with GRPO's epsilon made a parameter.
    """
    r = rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())
    dev = r - r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, correction=0)
    equal = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)  # exact 0, not rounding / (0 + eps)
    return torch.where(equal, torch.zeros_like(dev), dev / (std + eps))


def _adv(r: list, eps: sp.Expr) -> list:
    """The estimator, symbolically, on one group's rewards."""
    m = sum(r) / len(r)
    sd = sp.sqrt(sum((x - m) ** 2 for x in r) / len(r))
    return [0 * x if sd == 0 else (x - m) / (sd + eps) for x in r]


S, N, E = sp.Symbol("s", nonnegative=True), sp.Symbol("n", positive=True), sp.Symbol("epsilon", positive=True)
TERM = N * S**2 / (S + E) ** 2
"""sum_i A_i^2 over one group of n samples whose rewards have population std s: n s^2 / (s + eps)^2."""


@cache
def derive_std_eps_gradnorm_ratio(G: int = 4, groups: int = 3) -> Derivation:
    """||g_std_eps|| / ||g_grpo|| from the groups' reward stds s_g (sizes n_g).

    Model (as derive_grpo_gradnorm_ratio): g = sum_{g,i} A_{g,i} s_{g,i}, score vectors uncorrelated across
    samples with equal covariance Sigma, so E||g||^2 = tr(Sigma) sum_{g,i} A_{g,i}^2. For std_eps
    sum_i A_{g,i}^2 = n_g s_g^2 / (s_g + eps)^2, for GRPO the same with eps = delta = 1e-6:
        ratio = sqrt( sum_g n_g s_g^2/(s_g + eps)^2 / sum_g n_g s_g^2/(s_g + delta)^2 ).
    Residuals: the per-group sum for binary rewards with k = 0..G successes (s = sqrt(q(1-q)), q = k/G),
    the E||g||^2 identity for scalar scores, and ratio = 1 at eps = delta.
    Source: Shao et al. 2024 sec. 4.1.2; the norm model of theory.advantages.derive_grpo_gradnorm_ratio.
    """
    delta = sp.Symbol("delta", positive=True)
    s = sp.symbols(f"s_1:{groups + 1}", nonnegative=True)
    n = sp.symbols(f"n_1:{groups + 1}", positive=True)
    num = sum(TERM.subs({S: a, N: b}) for a, b in zip(s, n))
    den = sum(TERM.subs({S: a, N: b, E: delta}) for a, b in zip(s, n))
    ratio = sp.sqrt(num / den)
    residuals = {}
    for k in range(G + 1):
        rk = [sp.Integer(1)] * k + [sp.Integer(0)] * (G - k)
        q = sp.Rational(k, G)
        residuals[f"k={k}: sum A^2 = G s^2/(s+eps)^2"] = (sum(a**2 for a in _adv(rk, E))
                                                          - TERM.subs({S: sp.sqrt(q * (1 - q)), N: G}))
    r = sp.symbols(f"r1:{G + 1}", real=True)
    xi = sp.symbols(f"xi1:{G + 1}", real=True)
    mu, sig = sp.Symbol("mu", real=True), sp.Symbol("sigma", positive=True)
    m = sum(r) / G
    A = [(x - m) / (sp.Symbol("sd", positive=True) + E) for x in r]  # any group scale: the identity is linear
    poly = sp.Poly(sp.expand(sum(a * (mu + x) for a, x in zip(A, xi)) ** 2), *xi)
    moment = {0: 1, 1: 0, 2: sig**2}
    second = sum(c * sp.prod([moment[e] for e in ex]) for ex, c in poly.terms())
    residuals["E||g||^2 = tr(Sigma) sum_i A_i^2"] = second - sig**2 * sum(a**2 for a in A)
    residuals["ratio = 1 at eps = delta"] = ratio.subs(E, delta) - 1
    return Derivation(
        name="std_eps_gradnorm_ratio",
        statement=sp.Eq(sp.Symbol(r"\|g_{\epsilon}\| / \|g_{grpo}\|"), ratio),
        steps=(("std_eps reweights group g by 1/(s_g + eps)",
                sp.Eq(sp.Symbol("A_{g,i}"), sp.Symbol("A^{dr}_{g,i}") / (sp.Symbol("s_g") + E))),
               ("one group's sum of squared advantages", sp.Eq(sp.Symbol(r"\sum_i A_{g,i}^2"), TERM)),
               ("second moment of the gradient", sp.Eq(sp.Symbol(r"\mathbb{E}\|g\|^2"),
                                                        sp.Symbol(r"\mathrm{tr}\Sigma\sum_{g,i}A_{g,i}^2")))),
        result={"grad/norm_ratio_vs_grpo": ratio},
        residuals=residuals,
        source="Shao et al. 2024 sec. 4.1.2; theory.advantages.derive_grpo_gradnorm_ratio",
        symbols={"delta": delta, "epsilon": E, **{str(x): x for x in (*s, *n)}},
    )


_term = sp.lambdify((S, N, E), TERM, modules="numpy")  # compiled from the derivation's per-group sum


@predictor("std_eps_gradnorm_ratio", derivation=derive_std_eps_gradnorm_ratio)
def std_eps_gradnorm_ratio(stats, *, eps: float = 0.1) -> dict[str, float]:
    """Predicted ||grad|| of std_eps (with this eps) over GRPO's, from one batch's group rewards.

    ratio = sqrt( sum_g n_g s_g^2/(s_g + eps)^2 / sum_g n_g s_g^2/(s_g + 1e-6)^2 ), s_g the population std of
    group g's rewards. Absent when no group has two distinct rewards. stats: reward [S], group_index [S].
    Derivation: derive_std_eps_gradnorm_ratio (above).
    """
    r, gi = need(stats, "std_eps_gradnorm_ratio", "reward", "group_index")
    _, g = torch.unique(gi.long(), return_inverse=True)
    n = torch.bincount(g).double()
    mean = torch.zeros_like(n).index_add_(0, g, r) / n
    sd = (torch.zeros_like(n).index_add_(0, g, (r - mean[g]) ** 2) / n).sqrt()
    if not bool((sd > 0).any()):
        return {}
    num, den = _term(sd.numpy(), n.numpy(), eps).sum(), _term(sd.numpy(), n.numpy(), GRPO_STD_EPS).sum()
    return {"grad/norm_ratio_vs_grpo": float((num / den) ** 0.5)}

"""Predictor for hypotheses/09: the pass@k advantage's gradient norm against RLOO, and its no-signal groups.

The estimator itself is built in (trainer.algos.pass_at_k, Chen et al. 2025 sec. 3); this plugin adds what
the theory says about it for binary rewards, registered with the public decorator:

  derive_pass_at_k_gradnorm_ratio   sympy: one group's sum_i A_i^2 in closed form, checked against the
                                    definition (an exact enumeration over all k-subsets)
  pass_at_k_gradnorm_ratio          the predictor compiled from it, parameter k (int, default 4)

Closed form (group of G binary rewards, c correct, u = 1 - rho = C(G - c, k) / C(G, k)):
  sum_i (m_i - rho)^2 = c G u^2 / (G - c)      (from sum_i A_i = 0: A- = -c A+ / (G - c), A+ = u)
  sum_i A_i^2         = c G u^2 / ((G - c) (sqrt(u (1 - u)) + eps)^2)     (normalize = True, the default)
  RLOO:               = (G / (G - 1))^2 c (G - c) / G
k = 1 gives G per mixed group (GRPO). A group with c > G - k has u = 0: every k-subset holds a success, so
pass@k gives it no signal although RLOO does.
"""
from __future__ import annotations

import itertools
import math
from functools import cache

import sympy as sp
import torch

from solidrl.theory.derivation import Derivation
from solidrl.theory.predictors import need, predictor
from solidrl.trainer.algos import GRPO_STD_EPS  # pass_at_k's default eps

C, G_, U, E = (sp.Symbol("c", positive=True), sp.Symbol("G", positive=True),
               sp.Symbol("u", nonnegative=True), sp.Symbol("epsilon", nonnegative=True))
TERM = C * G_ * U**2 / ((G_ - C) * (sp.sqrt(U * (1 - U)) + E) ** 2)
"""sum_i A_i^2 of pass_at_k over one mixed group (c correct of G, u = C(G-c, k)/C(G, k))."""
RLOO_TERM = (G_ / (G_ - 1)) ** 2 * C * (G_ - C) / G_
"""sum_i A_i^2 of RLOO over the same group."""


def _enumerated(G: int, k: int, c: int) -> list:
    """pass_at_k's (m_i - rho) by definition: means over all k-subsets of max_S r (exact rationals)."""
    r = [1] * c + [0] * (G - c)
    subsets = list(itertools.combinations(range(G), k))
    rho = sp.Rational(sum(max(r[j] for j in s) for s in subsets), len(subsets))
    out = []
    for i in range(G):
        mine = [s for s in subsets if i in s]
        out.append(sp.Rational(sum(max(r[j] for j in s) for s in mine), len(mine)) - rho)
    return out


@cache
def derive_pass_at_k_gradnorm_ratio(G: int = 6) -> Derivation:
    """||g_pass@k|| / ||g_rloo|| from the groups' success counts, binary rewards.

    Model (as derive_grpo_gradnorm_ratio): g = sum_{g,i} A_{g,i} s_{g,i}, score vectors uncorrelated across
    samples with equal covariance, so E||g||^2 = tr(Sigma) sum_{g,i} A_{g,i}^2 and
        ratio = sqrt( sum_g TERM(c_g) / sum_g RLOO_TERM(c_g) ).
    Residuals: for every 1 <= k <= G and 1 <= c <= G - 1, the closed form sum_i (m_i - rho)^2 = c G u^2/(G-c)
    minus the exact enumeration over k-subsets; the normalizer rho (1 - rho) = E_S[max^2] - rho^2 for binary
    rewards; and k = 1 gives TERM = G (GRPO) at eps = 0.
    Source: Chen et al. 2025 (arXiv 2508.10751) sec. 3; Walder & Karkhanis 2025 (arXiv 2505.15201).
    """
    residuals = {}
    for k in range(1, G + 1):
        for c in range(1, G):
            u = sp.Rational(math.comb(G - c, k), math.comb(G, k))
            dev = _enumerated(G, k, c)
            closed = (TERM * (sp.sqrt(U * (1 - U))) ** 2).subs({C: c, G_: G, U: u, E: 0})  # undo the /sigma^2
            residuals[f"k={k}, c={c}: sum (m_i - rho)^2"] = sp.nsimplify(sum(d**2 for d in dev)) - (
                closed if u not in (0, 1) else sp.Rational(c * G, G - c) * u**2)
    rho = sp.Symbol("rho", nonnegative=True)
    residuals["binary: E[max^2] - rho^2 = rho (1 - rho)"] = (rho - rho**2) - rho * (1 - rho)
    residuals["k = 1: TERM = G"] = sp.simplify(TERM.subs({U: 1 - C / G_, E: 0}) - G_)
    g = sp.symbols("c_1:4", positive=True)
    u = sp.symbols("u_1:4", nonnegative=True)
    ratio = sp.sqrt(sum(TERM.subs({C: a, U: b}) for a, b in zip(g, u)) / sum(RLOO_TERM.subs(C, a) for a in g))
    return Derivation(
        name="pass_at_k_gradnorm_ratio",
        statement=sp.Eq(sp.Symbol(r"\|g_{pass@k}\| / \|g_{rloo}\|"), ratio),
        steps=(("zero sum within the group", sp.Eq(sp.Symbol("A_-"), -C * sp.Symbol("A_+") / (G_ - C))),
               ("one group's sum of squared advantages", sp.Eq(sp.Symbol(r"\sum_i A_i^2"), TERM)),
               ("RLOO's", sp.Eq(sp.Symbol(r"\sum_i (A^{rloo}_i)^2"), RLOO_TERM))),
        result={"grad/norm_ratio_vs_rloo": ratio},
        residuals=residuals,
        source="Chen et al. 2025 sec. 3; theory.advantages.derive_grpo_gradnorm_ratio (the norm model)",
        symbols={"G": G_, "epsilon": E, **{str(x): x for x in (*g, *u)}},
    )


_term = sp.lambdify((C, G_, U, E), TERM, modules="numpy")
_rloo = sp.lambdify((C, G_), RLOO_TERM, modules="numpy")


@predictor("pass_at_k_gradnorm_ratio", derivation=derive_pass_at_k_gradnorm_ratio)
def pass_at_k_gradnorm_ratio(stats, *, k: int = 4) -> dict[str, float]:
    """pass_at_k (k, normalize=True) over RLOO on one batch of binary rewards, and their no-signal groups.

    grad/norm_ratio_vs_rloo = sqrt(sum_g TERM(c_g) / sum_g RLOO_TERM(c_g)) over mixed groups (TERM = 0 where
    c_g > G - k); adv/zero_frac_pass_at_k = share of groups with c = 0 or c > G - k (pass@k's no-signal
    groups); adv/zero_frac_delta_vs_rloo = share with G - k < c < G (the mixed groups pass@k silences).
    stats: reward [S] (binary), group_index [S]. Absent when no group is mixed.
    Derivation: derive_pass_at_k_gradnorm_ratio (above).
    """
    r, gi = need(stats, "pass_at_k_gradnorm_ratio", "reward", "group_index")
    _, g = torch.unique(gi.long(), return_inverse=True)
    n = torch.bincount(g)
    c = torch.zeros_like(n, dtype=torch.float64).index_add_(0, g, r.double())
    out = {}
    num = den = 0.0
    silent = delta = 0
    for cg, ng in zip(c.tolist(), n.tolist()):
        cg = round(cg)
        if 0 < cg < ng:
            u = math.comb(ng - cg, k) / math.comb(ng, k) if k <= ng else 0.0
            num += float(_term(cg, ng, u, GRPO_STD_EPS)) if u > 0 else 0.0
            den += float(_rloo(cg, ng))
        silent += cg == 0 or cg > ng - k
        delta += ng - k < cg < ng
    if den > 0:
        out["grad/norm_ratio_vs_rloo"] = (num / den) ** 0.5
    out["adv/zero_frac_pass_at_k"] = silent / len(n)
    out["adv/zero_frac_delta_vs_rloo"] = delta / len(n)
    return out

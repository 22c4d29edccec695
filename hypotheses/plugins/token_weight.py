"""Predictor for hypotheses/11: the gradient-norm ratio of a per-token weight on chosen positions.

The weighting is built in (trainer.shaping `position`: token_it = weight for start <= t < end, else 1;
`token_id` the same on one token id). The per-token coefficient c_t = -d loss / d logp_t is then w_t c_t, so

  derive_token_weight_gradnorm_ratio   sympy: E||sum_t w_t c_t s_t||^2 = tr(Sigma) sum_t w_t^2 c_t^2 for score
                                       vectors uncorrelated across tokens with equal covariance
  token_weight_gradnorm_ratio          the predictor: sqrt(sum_t w_t^2 c_t^2 / sum_t c_t^2) on the baseline's
                                       batch, the weights from the stats' `position` or `token_id`
                                       (docs/contracts.md), parameters start, end, weight, token_id
"""
from __future__ import annotations

from functools import cache

import sympy as sp
import torch

from solidrl.theory.derivation import Derivation
from solidrl.theory.predictors import need, predictor

W = sp.Symbol("w", positive=True)


@cache
def derive_token_weight_gradnorm_ratio(T: int = 4) -> Derivation:
    """||g_w|| / ||g|| for per-token weights w_t on the coefficients c_t of grad log pi(a_t).

    Model: g = sum_t w_t c_t s_t with s_t = mu + xi_t, E xi_t = 0, E xi_t xi_u = sigma^2 [t = u] and mu = 0 (the
    score has mean 0 under pi), so E||g||^2 = sigma^2 sum_t w_t^2 c_t^2 and
        ratio = sqrt( sum_t w_t^2 c_t^2 / sum_t c_t^2 ).
    Two groups of tokens (weighted w, share of squared coefficient f): ratio = sqrt(1 + (w^2 - 1) f).
    Residuals: the second moment of the scalar model over T tokens; the two-group form; ratio = 1 at w = 1.
    Neglected: correlation of the score vectors across tokens of one sequence (it enters as cross terms
    sum_{t != u} w_t w_u c_t c_u E s_t.s_u, which the uncorrelated model drops).
    Source: the norm model of theory.advantages.derive_grpo_gradnorm_ratio, per token.
    """
    c = sp.symbols(f"c1:{T + 1}", real=True)
    w = sp.symbols(f"w1:{T + 1}", positive=True)
    xi = sp.symbols(f"xi1:{T + 1}", real=True)
    sig = sp.Symbol("sigma", positive=True)
    poly = sp.Poly(sp.expand(sum(a * b * x for a, b, x in zip(w, c, xi)) ** 2), *xi)
    moment = {0: 1, 1: 0, 2: sig**2}
    second = sum(k * sp.prod([moment[e] for e in ex]) for ex, k in poly.terms())
    ratio = sp.sqrt(sum(a**2 * b**2 for a, b in zip(w, c)) / sum(b**2 for b in c))
    f = sp.Symbol("f", nonnegative=True)
    two = ratio.subs({w[0]: W, **{x: 1 for x in w[1:]}})
    share = c[0] ** 2 / sum(b**2 for b in c)
    return Derivation(
        name="token_weight_gradnorm_ratio",
        statement=sp.Eq(sp.Symbol(r"\|g_w\| / \|g\|"), ratio),
        steps=(("weighted coefficient", sp.Eq(sp.Symbol("c^w_t"), sp.Symbol("w_t") * sp.Symbol("c_t"))),
               ("second moment", sp.Eq(sp.Symbol(r"\mathbb{E}\|g_w\|^2"), sig**2 * sp.Symbol(r"\sum_t w_t^2 c_t^2"))),
               ("two groups", sp.Eq(sp.Symbol("ratio"), sp.sqrt(1 + (W**2 - 1) * f)))),
        result={"grad/norm_ratio_vs_unweighted": ratio},
        residuals={"E||g||^2 = sigma^2 sum w^2 c^2": second - sig**2 * sum(a**2 * b**2 for a, b in zip(w, c)),
                   "two groups: sqrt(1 + (w^2 - 1) f)": two**2 - (1 + (W**2 - 1) * share),
                   "ratio = 1 at w = 1": ratio.subs({x: 1 for x in w}) - 1},
        source="theory.advantages.derive_grpo_gradnorm_ratio (the norm model), per token",
        symbols={"sigma": sig, **{str(x): x for x in (*c, *w)}},
    )


@predictor("token_weight_gradnorm_ratio", derivation=derive_token_weight_gradnorm_ratio)
def token_weight_gradnorm_ratio(stats, *, start: int = 0, end: int = 0, weight: float = 1.0,
                                token_id: int = -1) -> dict[str, float]:
    """sqrt(sum_t w_t^2 c_t^2 / sum_t c_t^2), w_t = weight on chosen tokens, else 1.

    Chosen: token_id >= 0 -> tokens with that id (trainer.shaping `token_id`); else positions start <= t < end
    (end = 0: to the end; trainer.shaping `position`). Also adv/weighted_token_frac: the share of loss tokens
    chosen. stats: coef [N], position [N], token_id [N]. Absent when every coefficient is 0.
    Derivation: derive_token_weight_gradnorm_ratio (above).
    """
    coef, pos, ids = need(stats, "token_weight_gradnorm_ratio", "coef", "position", "token_id")
    if token_id >= 0:
        chosen = ids.long() == token_id
    else:
        t = pos.long()
        chosen = (t >= start) & ((t < end) if end > 0 else torch.ones_like(t, dtype=torch.bool))
    w = torch.where(chosen, float(weight), 1.0).double()
    c2 = coef.double() ** 2
    if not float(c2.sum()) > 0:
        return {}
    return {"grad/norm_ratio_vs_unweighted": float(((w**2 * c2).sum() / c2.sum()).sqrt()),
            "adv/weighted_token_frac": float(chosen.double().mean())}

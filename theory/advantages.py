"""Advantage estimators and loss aggregation, as reweightings of the policy gradient.

Derivations:
  grpo_gradnorm_ratio  GRPO = Dr.GRPO with group g reweighted by 1/sigma_g (binary rewards:
                       sigma_g = sqrt(p_g (1 - p_g))), and the gradient-norm ratio that predicts
  rloo_unbiased        exact expected gradients on a 2-arm bandit by enumerating all outcomes:
                       RLOO = true gradient, Dr.GRPO = (G-1)/G of it, GRPO = E_k sqrt(q(1-q)), q = k/G
  aggregation_weights  the weight d L / d l_{b,t} each loss aggregation puts on a token of a length-L_b response

The estimators are the trainer's (trainer/algos.py: grpo uses the population std and + 1e-6);
here they are written again symbolically, so the tests can hold one against the other.
Left out: GAE / critics (no value function in solidrl), and correlations between advantages and
score vectors in the norm prediction (stated as an assumption below).

References: Shao et al. 2024, DeepSeekMath, sec. 4.1.2 (GRPO); Kool et al. 2019 and Ahmadian et al.
2024, sec. 3 (RLOO); Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr. GRPO), sec. 3.2;
Yu et al. 2025, DAPO, sec. 3.3 (token-level loss).
"""
from __future__ import annotations

from functools import cache
from itertools import product

import sympy as sp

from solidrl.theory.derivation import Derivation

__all__ = ["derive_grpo_gradnorm_ratio", "derive_rloo_unbiased", "derive_aggregation_weights", "ADV_FORMS"]


def _grpo(r: list) -> list:
    m = sum(r) / len(r)
    sd = sp.sqrt(sum((x - m) ** 2 for x in r) / len(r))  # population std, as trainer/algos.py
    return [0 * x if sd == 0 else (x - m) / sd for x in r]


def _rloo(r: list) -> list:
    return [x - (sum(r) - x) / (len(r) - 1) for x in r]


def _dr_grpo(r: list) -> list:
    m = sum(r) / len(r)
    return [x - m for x in r]


ADV_FORMS = {"grpo": _grpo, "rloo": _rloo, "dr_grpo": _dr_grpo}
"""name -> symbolic advantage of one group (a list of rewards); GRPO without its 1e-6."""


@cache
def derive_grpo_gradnorm_ratio(G: int = 4, groups: int = 3) -> Derivation:
    """Gradient-norm ratio of GRPO against Dr.GRPO and RLOO, from the group rewards.

    Model: the policy gradient is g = sum_{groups} sum_i A_i s_i with per-sample score vectors
    s_i = mu + xi_i, E xi_i = 0, E xi_i xi_j^T = delta_ij Sigma, independent of A. Since sum_i A_i = 0
    in each group, E||g||^2 = tr(Sigma) sum_g sum_i A_{g,i}^2, so
      ratio^2 = sum_g sum_i A^grpo_{g,i}^2 / sum_g sum_i A^base_{g,i}^2.
    Binary rewards, success rate p_g, group size G:  sum_i (A^dr)^2 = G p_g (1 - p_g),
    sum_i (A^grpo)^2 = G 1[0 < p_g < 1],  A^rloo = G/(G-1) A^dr. Hence
      grad/norm_ratio_vs_dr_grpo = sqrt( #mixed groups / sum_g p_g (1 - p_g) )
      grad/norm_ratio_vs_rloo    = (G-1)/G * grad/norm_ratio_vs_dr_grpo
    Result in p_1..p_groups and G. Residuals: the E||g||^2 identity (scalar model, G samples) and the
    per-group sums for every k = 0..G successes.
    Source: Shao et al. 2024 sec. 4.1.2; Liu et al. 2025 sec. 3.2 (the 1/std question-difficulty weight).
    """
    Gs = sp.Symbol("G", positive=True, integer=True)
    p = sp.symbols(f"p_1:{groups + 1}", nonnegative=True)
    mixed = [sp.Piecewise((1, sp.And(q > 0, q < 1)), (0, True)) for q in p]
    vs_dr = sp.sqrt(sum(mixed) / sum(q * (1 - q) for q in p))
    # E[(sum_i A_i s_i)^2] for scalar scores s_i = mu + xi_i, A_i = r_i - mean r (a group's centred rewards)
    r = sp.symbols(f"r1:{G + 1}", real=True)
    mu, sig = sp.Symbol("mu", real=True), sp.Symbol("sigma", positive=True)
    xi = sp.symbols(f"xi1:{G + 1}", real=True)
    A = _dr_grpo(list(r))
    # E over independent xi_i with E xi = 0, E xi^2 = sigma^2: map each monomial to its moment
    moment = {0: 1, 1: 0, 2: sig**2}
    poly = sp.Poly(sp.expand(sum(a * (mu + x) for a, x in zip(A, xi)) ** 2), *xi)
    second_moment = sum(coeff * sp.prod([moment[e] for e in exps]) for exps, coeff in poly.terms())
    residuals = {"E||g||^2 = tr(Sigma) sum_i A_i^2": second_moment - sig**2 * sum(a**2 for a in A)}
    for k in range(G + 1):
        rk = [sp.Integer(1)] * k + [sp.Integer(0)] * (G - k)
        q = sp.Rational(k, G)
        residuals[f"k={k}: sum A_dr^2 = G q(1-q)"] = sum(a**2 for a in _dr_grpo(rk)) - G * q * (1 - q)
        residuals[f"k={k}: sum A_grpo^2 = G 1[mixed]"] = sum(a**2 for a in _grpo(rk)) - G * int(0 < k < G)
        residuals[f"k={k}: A_rloo = G/(G-1) A_dr"] = sp.Matrix(_rloo(rk)) - sp.Rational(G, G - 1) * sp.Matrix(_dr_grpo(rk))
    return Derivation(
        name="grpo_gradnorm_ratio",
        statement=sp.Eq(sp.Symbol(r"\|g_{grpo}\| / \|g_{dr}\|"),
                        sp.sqrt(sp.Symbol(r"\#\mathrm{mixed}") / sp.Sum(sp.Symbol("p_g") * (1 - sp.Symbol("p_g")),
                                                                          (sp.Symbol("g"), 1, sp.Symbol("n"))))),
        steps=(
            ("GRPO reweights group g by 1/sigma_g", sp.Eq(sp.Symbol("A^{grpo}_{g,i}"), sp.Symbol("A^{dr}_{g,i}") / sp.Symbol(r"\sigma_g"))),
            ("binary rewards", sp.Eq(sp.Symbol(r"\sigma_g"), sp.sqrt(sp.Symbol("p_g") * (1 - sp.Symbol("p_g"))))),
            ("second moment of the gradient", sp.Eq(sp.Symbol(r"\mathbb{E}\|g\|^2"),
                                                     sp.Symbol(r"\mathrm{tr}\Sigma\sum_{g,i}A_{g,i}^2"))),
        ),
        result={"grad/norm_ratio_vs_dr_grpo": vs_dr, "grad/norm_ratio_vs_rloo": (Gs - 1) / Gs * vs_dr},
        residuals=residuals,
        source="Shao et al. 2024 sec. 4.1.2; Liu et al. 2025 sec. 3.2",
        symbols={"G": Gs, **{str(q): q for q in p}},
    )


@cache
def derive_rloo_unbiased(G: int = 4) -> Derivation:
    """Exact expected gradient of each estimator on a 2-arm softmax bandit, by enumerating all 2^G outcomes.

    Arm 1 pays 1, arm 2 pays 0, pi(arm 1) = p = sigmoid(theta). d log pi(arm1)/d theta = 1 - p,
    d log pi(arm2)/d theta = -p; the true gradient is dJ/d theta = p (1 - p). The estimator's
    gradient is 1/G sum_i A_i d log pi(o_i)/d theta, averaged over the outcomes o in {1, 2}^G.
      rloo:    E = p (1 - p)                             (unbiased: the baseline excludes o_i)
      dr_grpo: E = (G-1)/G p (1 - p)                     (its baseline includes r_i)
      grpo:    E = E_{k~Bin(G,p)} sqrt(q (1 - q)), q = k/G   (Dr.GRPO's q(1-q)/G-scaled term over sigma = sqrt(q(1-q)))
    Result: the expected gradients, in p. Source: Kool et al. 2019; Ahmadian et al. 2024 sec. 3.
    """
    p = sp.Symbol("p", positive=True)
    score = {1: 1 - p, 0: -p}  # reward -> d log pi(arm) / d theta
    expected = {name: sp.Integer(0) for name in ADV_FORMS}
    for outcome in product((1, 0), repeat=G):
        k = sum(outcome)
        prob = p**k * (1 - p) ** (G - k)
        r = [sp.Integer(x) for x in outcome]
        for name, adv in ADV_FORMS.items():
            expected[name] += prob * sum(a * score[x] for a, x in zip(adv(r), outcome)) / G
    grpo_closed = sum(sp.binomial(G, k) * p**k * (1 - p) ** (G - k) * sp.sqrt(sp.Rational(k, G) * (1 - sp.Rational(k, G)))
                      for k in range(G + 1))
    true = p * (1 - p)
    return Derivation(
        name="rloo_unbiased",
        statement=sp.Eq(sp.Symbol(r"\mathbb{E}\,\hat g_{rloo}"), sp.Symbol(r"\nabla J")),
        steps=(("true gradient", sp.Eq(sp.Symbol(r"\nabla_\theta J"), true)),
               ("grpo closed form", sp.Eq(sp.Symbol(r"\mathbb{E}\,\hat g_{grpo}"), grpo_closed))),
        result={f"E grad/{n}": sp.expand(e) for n, e in expected.items()} | {"true": true},
        residuals={
            "rloo = true gradient": expected["rloo"] - true,
            "dr_grpo = (G-1)/G true gradient": expected["dr_grpo"] - sp.Rational(G - 1, G) * true,
            "grpo = E_k sqrt(q(1-q))": expected["grpo"] - grpo_closed,
        },
        source="Kool et al. 2019; Ahmadian et al. 2024 sec. 3; Liu et al. 2025 sec. 3.2",
        symbols={"p": p},
    )


@cache
def derive_aggregation_weights(lengths: tuple[int, ...] = (2, 3, 1)) -> Derivation:
    """Per-token weight w_{b,t} = d L / d l_{b,t} of each aggregation mode (B responses, lengths L_b).

      token-mean               w = 1 / sum_b L_b        (a response weighs L_b / sum L: long ones weigh more)
      seq-mean-token-mean      w = 1 / (B L_b)          (each response weighs 1/B: tokens of long ones weigh less)
      seq-mean-token-sum       w = 1 / B                (a response weighs L_b / B)
      seq-mean-token-sum-norm  w = 1 / (B C)            (C a constant, Dr.GRPO's max length; response weighs L_b/(B C))
    Result in L_b, B, C and S = sum_b L_b (symbols "L", "B", "C", "S"). Residuals: sympy's d L / d l_{b,t} of each mode written
    over symbolic per-token losses for the concrete `lengths`, against these forms.
    Source: trainer/algos.py docstrings; DAPO sec. 3.3; DeepSeekMath eq. 3; Dr. GRPO sec. 3.2.
    """
    L, B, C, S = (sp.Symbol(n, positive=True) for n in "LBCS")  # S = sum_b L_b, the batch's token count
    forms = {"token-mean": 1 / S, "seq-mean-token-mean": 1 / (B * L),
             "seq-mean-token-sum": 1 / B, "seq-mean-token-sum-norm": 1 / (B * C)}
    l = [[sp.Symbol(f"l_{b}{t}") for t in range(n)] for b, n in enumerate(lengths)]
    nb, total = len(lengths), sum(lengths)
    losses = {
        "token-mean": sum(map(sum, l)) / total,
        "seq-mean-token-mean": sum(sum(row) / len(row) for row in l) / nb,
        "seq-mean-token-sum": sum(map(sum, l)) / nb,
        "seq-mean-token-sum-norm": sum(map(sum, l)) / (nb * C),
    }
    residuals = {}
    for mode, loss in losses.items():
        form = forms[mode].subs({S: total, B: nb})
        residuals[mode] = sp.Matrix([loss.diff(x) - form.subs(L, len(row)) for row in l for x in row])
    return Derivation(
        name="aggregation_weights",
        statement=sp.Tuple(*(sp.Eq(sp.Symbol(f"w_{{{m}}}"), f) for m, f in forms.items())),
        steps=(("per-response weight", sp.Tuple(*(L * f for f in forms.values()))),),
        result=forms,
        residuals=residuals,
        source="DAPO sec. 3.3; DeepSeekMath eq. 3; Dr. GRPO sec. 3.2",
        symbols={"L": L, "B": B, "C": C, "S": S},
    )

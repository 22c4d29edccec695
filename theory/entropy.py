"""Entropy dynamics of a softmax policy under a logit step, and the step each update rule induces.

Derivations (each `derive_<name>` pairs with predictor `<name>` where one exists):
  softmax_expansion  H(softmax(z + eps d)) and KL(pi_z || pi_{z+eps d}) to second order in eps
  tabular_sgd        the logit step of SGD on a tabular softmax, dz = eta c (e_a - pi)    (Mei et al. 2020)
  tabular_npg        natural policy gradient, dz = eta c e_a / pi_a                        (Kakade 2001)
  tabular_adam       Adam's first step, dz = eta sign(c) (2 e_a - 1)                       (Kingma & Ba 2015)
  cov_entropy        the expected step over a ~ pi: dH = -eta Cov(log pi, A)               (Cui et al. 2025)

"Tabular" means every sampled token sits in its own state with its own logits (kernel = identity):
the update of one token's logits does not move another's. The kernel form (theory.kernel) drops that.
Left out: multi-step (beyond one optimizer step) dynamics and momentum after Adam's first step.

References: Mei et al. 2020, "On the Global Convergence Rates of Softmax Policy Gradient Methods",
Lemma 2 (d pi / d z = diag(pi) - pi pi^T); Kakade 2001, "A Natural Policy Gradient"; Cui et al. 2025,
"The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models" (arXiv 2505.22617),
Lemma 1 / Theorems 1-2; Kingma & Ba 2015, "Adam", Algorithm 1.
"""
from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Callable

import sympy as sp
import torch
from torch import Tensor

from solidrl.theory.derivation import STAT, Cov, Derivation, O, Softmax, Var

__all__ = [
    "derive_softmax_expansion", "derive_tabular_sgd", "derive_tabular_npg", "derive_tabular_adam",
    "derive_cov_entropy", "directional_moments", "token_stats",
]

eps = sp.Symbol("epsilon", positive=True)
_c, _lr = STAT["coef"], STAT["lr"]
_la, _H, _s2, _s2l, _s3 = (STAT[k] for k in ("logp", "entropy", "sum_p2", "sum_p2_logp", "sum_p3"))
_pa = sp.exp(_la)  # pi(a), the sampled token's probability


def _entropy_and_kl_of_step(sm: Softmax, d: list[sp.Expr]) -> tuple[sp.Expr, sp.Expr]:
    """First-order dH = -Cov(log pi, d) and second-order KL = Var(d)/2 (from derive_softmax_expansion)."""
    return -sm.cov(sm.logp, d), sm.var(d) / 2


@cache
def derive_softmax_expansion(V: int = 3) -> Derivation:
    """H and KL along the logit path z -> z + eps d, to second order in eps.

    dH = -eps Cov_pi(log pi, d) - eps^2/2 [Var_pi(d) + Cov_pi(log pi, (d - E d)^2)] + O(eps^3)
    KL(pi_z || pi_{z+eps d}) = -eps E d + log E e^{eps d} = eps^2/2 Var_pi(d) + eps^3/6 E(d - E d)^3 + O(eps^4)
    (the KL is the cumulant generating function of d minus its linear term). d: [V] any direction.

    The residuals compare sympy's Taylor coefficients (derivatives at eps = 0) with these closed forms
    for a concrete V. Result: the second-order truncations, in p1..pV, d1..dV, epsilon.
    Source: Mei et al. 2020, Lemma 2 (d pi/d z); the first-order term is Cui et al. 2025, Lemma 1.
    """
    sm = Softmax(V)
    d = sp.symbols(f"d1:{V + 1}", real=True)
    Z = sum(q * sp.exp(eps * dv) for q, dv in zip(sm.p, d))
    logpi = [lq + eps * dv - sp.log(Z) for lq, dv in zip(sm.logp, d)]
    pi = [sp.exp(lp) for lp in logpi]
    H = -sum(q * lp for q, lp in zip(pi, logpi))
    KL = sum(q * (lq - lp) for q, lq, lp in zip(sm.p, sm.logp, logpi))

    def taylor(f, k):
        return sp.diff(f, eps, k).subs(eps, 0) / sp.factorial(k)

    dbar = sm.E(d)
    dc = [dv - dbar for dv in d]
    h1 = -sm.cov(sm.logp, d)
    h2 = -(sm.var(d) + sm.cov(sm.logp, [x**2 for x in dc])) / 2
    k2, k3 = sm.var(d) / 2, sm.E([x**3 for x in dc]) / 6
    pi_f, u = sp.Function(r"\pi"), sp.Symbol("v")  # display-only symbols of the statement and steps
    dv_, dbar_ = sp.Symbol("d_v"), sp.Symbol(r"\bar d")
    logpi_f, dd = sp.Function(r"\log\pi"), sp.Function("d")
    return Derivation(
        name="softmax_expansion",
        statement=sp.Tuple(
            sp.Eq(sp.Symbol(r"\Delta H"), -eps * Cov(logpi_f(u), dd(u))
                  - eps**2 / 2 * (Var(dd(u)) + Cov(logpi_f(u), (dd(u) - dbar_) ** 2)) + O(eps**3)),
            sp.Eq(sp.Symbol(r"\mathrm{KL}(\pi_z\|\pi_{z+\epsilon d})"),
                  eps**2 / 2 * Var(dd(u)) + eps**3 / 6 * sp.Symbol(r"\mathbb{E}(d-\bar d)^3") + O(eps**4)),
        ),
        steps=(
            ("policy path", sp.Eq(pi_f(u), sp.Symbol("p_v") * sp.exp(eps * dv_) / sp.Symbol(r"\sum_u p_u e^{\epsilon d_u}"))),
            ("its derivative", sp.Eq(sp.Derivative(pi_f(u), eps), pi_f(u) * (dv_ - dbar_))),
            ("derivative of the mean", sp.Eq(sp.Derivative(dbar_, eps), Var(dd(u)))),
            ("KL as a cumulant generating function", sp.Eq(sp.Symbol("KL"), -eps * dbar_
                                                             + sp.log(sp.Symbol(r"\mathbb{E}_\pi e^{\epsilon d}")))),
        ),
        result={"entropy/delta": eps * h1 + eps**2 * h2, "kl/step": eps**2 * k2},
        residuals={
            "dH/deps = -Cov(log pi, d)": sm.on_simplex(taylor(H, 1) - h1),
            "second-order H coefficient": sm.on_simplex(taylor(H, 2) - h2),
            "KL has no first-order term": sm.on_simplex(taylor(KL, 1)),
            "KL second order = Var(d)/2": sm.on_simplex(taylor(KL, 2) - k2),
            "KL third order = E(d - E d)^3 / 6": sm.on_simplex(taylor(KL, 3) - k3),
        },
        source="Mei et al. 2020 Lemma 2; Cui et al. 2025 Lemma 1; KL as a cumulant generating function",
        symbols={"epsilon": eps, **{str(s): s for s in (*sm.p, *d)}},
    )


def _tabular(name: str, V: int, d_of: Callable, forms: dict, steps: tuple, source: str,
             extra: Callable | None = None) -> Derivation:
    """Shared shape of the tabular derivations: a logit step d (token a = 0 sampled) and its stats form."""
    sm, a = Softmax(V), 0
    d = d_of(sm, a)
    dH, kl = _entropy_and_kl_of_step(sm, d)
    direct = {"entropy/delta": dH, "kl/step": kl, **(extra(sm, a) if extra else {})}
    return Derivation(
        name=name,
        statement=sp.Tuple(*(sp.Eq(sp.Symbol(k), v) for k, v in forms.items())),
        steps=(("logit step", sp.Eq(sp.Symbol(r"\Delta z"), sp.Matrix(d).T)),) + steps,
        result=forms,
        residuals={k: sm.matches(forms[k], direct[k], a) for k in forms},
        source=source,
    )


@cache
def derive_tabular_sgd(V: int = 4) -> Derivation:
    """One SGD step on a tabular softmax: dz_t = eta c_t (e_{a_t} - pi_t), c_t = -d loss / d logp_t.

    Per token (state s_t, sampled token a = a_t, pi_a = exp(logp)):
      entropy/delta  = -eta c [pi_a (logp + H) - sum_p2_logp - H sum_p2]                    (first order)
      kl/step        = eta^2 c^2 / 2 [pi_a (1-pi_a)^2 + sum_p3 - pi_a^3 - (pi_a - sum_p2)^2]  (second order)
      grad/logit_norm^2 = c^2 (1 - 2 pi_a + sum_p2)                        (||d loss / d z_t||^2, summed over t)
    using Cov(log pi, e_a) = pi_a (logp + H) and Cov(log pi, pi) = sum_p2_logp + H sum_p2.
    Source: Mei et al. 2020, Lemma 2 (d log pi(a)/d z = e_a - pi); Cui et al. 2025, Lemma 1.
    """
    def gn2(sm, a):
        return {"grad/logit_norm": sum((_c * (e - q)) ** 2 for e, q in zip(sm.onehot(a), sm.p))}

    return _tabular(
        "tabular_sgd", V,
        lambda sm, a: [_lr * _c * (e - q) for e, q in zip(sm.onehot(a), sm.p)],
        {
            "entropy/delta": -_lr * _c * (_pa * (_la + _H) - _s2l - _H * _s2),
            "kl/step": _lr**2 * _c**2 / 2 * (_pa * (1 - _pa) ** 2 + _s3 - _pa**3 - (_pa - _s2) ** 2),
            "grad/logit_norm": _c**2 * (1 - 2 * _pa + _s2),
        },
        (
            ("Cov with the sampled token", sp.Eq(Cov(sp.Symbol(r"\log\pi"), sp.Symbol("e_a")), _pa * (_la + _H))),
            ("Cov with the policy", sp.Eq(Cov(sp.Symbol(r"\log\pi"), sp.Symbol(r"\pi")), _s2l + _H * _s2)),
        ),
        "Mei et al. 2020 Lemma 2; Cui et al. 2025 Lemma 1",
        extra=gn2,
    )


@cache
def derive_tabular_npg(V: int = 4) -> Derivation:
    """Natural policy gradient on a tabular softmax: dz_t = eta F^+ c (e_a - pi) = eta c e_a / pi_a (mod 1).

    F = diag(pi) - pi pi^T is the Fisher of the logits; F e_a / pi_a = e_a - pi, so e_a / pi_a is a
    natural direction (F's null space is the constant vector, which moves neither H nor KL). Per token:
      entropy/delta = -eta c (logp + H)          kl/step = eta^2 c^2 (1 - pi_a) / (2 pi_a)
    Source: Kakade 2001; Cui et al. 2025, Theorem 2 (NPG: dH = -eta Cov(log pi, A)).
    """
    sm = Softmax(V)
    F = sp.diag(*sm.p) - sp.Matrix(sm.p) * sp.Matrix(sm.p).T
    a = 0
    fisher = sm.on_simplex(F * sp.Matrix(sm.onehot(a)) / sm.p[a] - (sp.Matrix(sm.onehot(a)) - sp.Matrix(sm.p)))
    out = _tabular(
        "tabular_npg", V,
        lambda sm, a: [_lr * _c * e / sm.p[a] for e in sm.onehot(a)],
        {"entropy/delta": -_lr * _c * (_la + _H), "kl/step": _lr**2 * _c**2 * (1 - _pa) / (2 * _pa)},
        (("Fisher of the logits", sp.Eq(sp.Symbol("F"), F)),),
        "Kakade 2001; Cui et al. 2025 Theorem 2",
    )
    return replace(out, residuals={**out.residuals, "F e_a / pi_a = e_a - pi": fisher})


@cache
def derive_tabular_adam(V: int = 4) -> Derivation:
    """Adam's first step on a tabular softmax: dz = -eta m/(sqrt(v) + eps_adam) = eta sign(c) (2 e_a - 1).

    At step 1 the bias-corrected moments are m = g, v = g^2, so the step is -eta g / (|g| + eps_adam),
    i.e. -eta sign(g) elementwise; g_v = -c (1[v=a] - pi_v) has sign -sign(c) at v = a and +sign(c)
    elsewhere. Adding the constant eta sign(c) (which moves nothing) gives 2 eta sign(c) e_a. Per token:
      entropy/delta = -2 eta sign(c) pi_a (logp + H)      kl/step = 2 eta^2 sign(c)^2 pi_a (1 - pi_a)
    Source: Kingma & Ba 2015, Algorithm 1 (bias correction makes step 1 a sign step).
    """
    g, ea = sp.Symbol("g", real=True, nonzero=True), sp.Symbol(r"\epsilon_{adam}", positive=True)
    out = _tabular(
        "tabular_adam", V,
        lambda sm, a: [_lr * sp.sign(_c) * (2 * e - 1) for e in sm.onehot(a)],
        {"entropy/delta": -2 * _lr * sp.sign(_c) * _pa * (_la + _H),
         "kl/step": 2 * _lr**2 * sp.sign(_c) ** 2 * _pa * (1 - _pa)},
        (("first Adam step", sp.Eq(sp.Symbol(r"\Delta\theta"), -_lr * g / (sp.sqrt(g**2) + ea))),),
        "Kingma & Ba 2015 Algorithm 1",
    )
    sign_limit = sp.limit(-_lr * g / (sp.sqrt(g**2) + ea), ea, 0) + _lr * sp.sign(g)
    return replace(out, residuals={**out.residuals, "step 1 -> -eta sign(g)": sign_limit})


@cache
def derive_cov_entropy(V: int = 3, N: int = 4) -> Derivation:
    """Expected entropy change over the sampled token, and its batch estimate (Cui et al. 2025).

    With c = A(a) and a ~ pi, the tabular steps average to
      NPG: E_a[dH] = -eta Cov_pi(log pi, A)            (Theorem 2)
      PG:  E_a[dH] = -eta Cov_pi(log pi, pi (A - E_pi A))  (Theorem 1 needs A centred under pi)
    The batch estimate over N sampled tokens replaces Cov_pi by the sample covariance (Cui et al. sec. 4):
      entropy/delta = -eta 1/N sum_t (logp_t - mean logp)(c_t - mean c)        (form "npg")
    and with c_t -> pi_t c_t for form "pg". Result in logp_1..logp_N, coef_1..coef_N, lr.
    Source: Cui et al. 2025 (arXiv 2505.22617), Theorems 1-2 and the Cov-based estimator of sec. 4.
    """
    sm = Softmax(V)
    A = sp.symbols(f"A1:{V + 1}", real=True)
    dH_npg = [-_lr * A[a] * (sm.logp[a] + sm.H) for a in range(V)]
    dH_pg = [-_lr * A[a] * (sm.cov(sm.logp, [e - q for e, q in zip(sm.onehot(a), sm.p)])) for a in range(V)]
    Abar = sm.E(A)
    l = sp.symbols(f"logp_1:{N + 1}", real=True)
    c = sp.symbols(f"coef_1:{N + 1}", real=True)
    lbar, cbar = sum(l) / N, sum(c) / N
    batch = -_lr * sum((li - lbar) * (ci - cbar) for li, ci in zip(l, c)) / N
    return Derivation(
        name="cov_entropy",
        statement=sp.Tuple(
            sp.Eq(sp.Symbol(r"\mathbb{E}_a\Delta H_{npg}"), -_lr * Cov(sp.Symbol(r"\log\pi"), sp.Symbol("A"))),
            sp.Eq(sp.Symbol(r"\mathbb{E}_a\Delta H_{pg}"),
                  -_lr * Cov(sp.Symbol(r"\log\pi"), sp.Symbol(r"\pi") * (sp.Symbol("A") - sp.Symbol(r"\bar A")))),
        ),
        steps=(("batch estimate", sp.Eq(sp.Symbol(r"\Delta H"), batch)),),
        result={"entropy/delta": batch},
        residuals={
            "NPG: E_a dH = -eta Cov(log pi, A)": sm.on_simplex(sm.E(dH_npg) + _lr * sm.cov(sm.logp, A)),
            "PG: E_a dH = -eta Cov(log pi, pi (A - Abar))": sm.on_simplex(
                sm.E(dH_pg) + _lr * sm.cov(sm.logp, [q * (x - Abar) for q, x in zip(sm.p, A)])),
        },
        source="Cui et al. 2025, Theorems 1-2, sec. 4",
        symbols={str(s): s for s in (*l, *c)},
    )


def directional_moments(logits: Tensor, d: Tensor) -> dict[str, Tensor]:
    """The moments of derive_softmax_expansion, numerically, per row in float64.

    logits, d: [..., V]. Returns [...] tensors: cov = Cov_pi(log pi, d), var = Var_pi(d),
    cov2 = Cov_pi(log pi, (d - E d)^2), kappa3 = E_pi (d - E d)^3, so that
    dH = -eps cov - eps^2/2 (var + cov2) + O(eps^3) and KL = eps^2/2 var + eps^3/6 kappa3 + O(eps^4).
    Centred forms (d - E d) avoid cancellation; float64 because a one-step change sits near float32 noise.
    """
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    d = d.double()
    dc = d - (p * d).sum(-1, keepdim=True)
    lc = logp - (p * logp).sum(-1, keepdim=True)
    return {
        "cov": (p * lc * dc).sum(-1),
        "var": (p * dc**2).sum(-1),
        "cov2": (p * lc * dc**2).sum(-1),
        "kappa3": (p * dc**3).sum(-1),
    }


def token_stats(logits: Tensor, actions: Tensor) -> dict[str, Tensor]:
    """The token-level softmax statistics of docs/contracts.md, from logits [N, V] and sampled ids [N].

    Returns float64 [N] tensors: logp = log pi(a), entropy = H(pi), sum_p2, sum_p2_logp, sum_p3
    (sum_p3 feeds tabular_sgd's kl/step). Terms with pi_v = 0 count 0 (0 log 0 = 0).
    """
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype))
    return {
        "logp": logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1),
        "entropy": -plogp.sum(-1),
        "sum_p2": (p**2).sum(-1),
        "sum_p2_logp": (p * plogp).sum(-1),
        "sum_p3": (p**3).sum(-1),
    }

"""The kernel form of a real network's logit step, and the exact first-order predictor built on it.

A network's update dtheta moves the logits of every state, sampled or not: dz(s) = J(s) dtheta + O(dtheta^2),
J(s) = d z(s) / d theta [V, P]. With SGD, dtheta = eta sum_t c_t J(s_t)^T (e_{a_t} - pi_t), so
  dz(s) = eta sum_t c_t K(s, s_t) (e_{a_t} - pi_t),   K(s, s') = J(s) J(s')^T   [V, V]   (empirical NTK)
and the tabular predictors (theory.entropy) are the special case K(s, s') = 1[s = s'] I. Pushing the
*actual* dtheta (any optimizer) through a Jacobian-vector product gives dz exactly to first order, and
with it dH = -Cov(log pi, dz) and KL = Var(dz)/2 (derive_softmax_expansion). The gap between this and the
tabular prediction is the kernel's cross-talk: what one token's update does to the other tokens' states.

Cost: one jvp is about three forwards; forward-mode AD needs eager or math attention (CPU SDPA raises
NotImplementedError), so the JVP probe is an option that runs every N steps.

Second order (derive_jvp2): the logits to second order along the step, z~ = z + dz1 + dz2/2 with
dz1 = J dtheta and dz2 = d^2/dt^2 z(theta + t dtheta) at t = 0 (the Hessian's quadratic form, by
forward-over-forward AD: a jvp of a jvp), and then the softmax functionals computed *exactly* on z~
(H(softmax z~) - H(pi), KL(pi || softmax z~), KL(softmax z~ || pi)) instead of their Taylor series in
dz: measured, 10% of tokens move a logit by more than 0.6 nats in one step, outside the per-token
softmax's Taylor range, while the network's logits stay close to quadratic in dtheta. The residual
after it is O(dtheta^3) for dH and O(dtheta^4) for the KL (ORDERS; residual_order measures it).
Third order (derive_jvp3): dz3/6 as well, by a third nesting (jvp_taylor_logits computes any order);
jvp1s (exact softmax on z + dz1) splits the first order's miss into softmax nonlinearity and logit curvature.
Left out: fourth-order logit terms, and the kernel matrix itself (never formed).

Size: one module for the kernel view's whole ladder (jvp, jvp1s, jvp2, jvp3, the trust region's use of
them): their derivations share the symbolic softmax-on-expansion helper and their probes one nested pass.

References: Ren & Sutherland, "Learning Dynamics of LLM Finetuning", ICLR 2025, eq. 3-5 (the
per-step decomposition dlog pi = -eta A K G); Jacot et al. 2018 (neural tangent kernel).
"""
from __future__ import annotations

import math
from functools import cache
from types import SimpleNamespace
from typing import Mapping, Optional, Sequence

import sympy as sp
import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from solidrl.theory.derivation import STAT, Cov, Derivation, Var
from solidrl.theory.entropy import derive_tabular_sgd, directional_moments

__all__ = ["derive_jvp", "derive_jvp1s", "derive_jvp2", "derive_jvp3", "derive_jvp_fd", "derive_trust_region",
           "derive_kernel_crosstalk", "jvp_logit_change", "jvp2_logit_change", "jvp_taylor_logits", "fd_taylor_logits",
           "linearized_stats", "expanded_stats", "taylor_stats", "logit_order_stats", "ORDERS", "residual_order"]

_lr = STAT["lr"]


def _kernel_step(V: int = 3, k: int = 2, onehot: bool = False) -> SimpleNamespace:
    """SGD logit step of a log-linear policy z(s) = W phi(s), tokens (s=0, a=0) and (s=1, a=1).

    W [V, k] and phi [2, k] symbolic (phi one-hot: the tabular case). Returns the direct step
    dW phi(s) (dW = -eta d loss / d W by sympy), its kernel form, the tabular step, and the pieces.
    """
    W = sp.Matrix(V, k, lambda i, j: sp.Symbol(f"w_{i}{j}", real=True))
    phi = sp.eye(2, k) if onehot else sp.Matrix(2, k, lambda i, j: sp.Symbol(f"phi_{i}{j}", real=True))
    c = sp.symbols("c1:3", real=True)
    tokens = [(0, 0), (1, 1)]

    def logpi(s: int) -> list[sp.Expr]:
        z = W * phi[s, :].T
        lse = sp.log(sum(sp.exp(zv) for zv in z))
        return [zv - lse for zv in z]

    def e(a: int) -> sp.Matrix:
        return sp.Matrix([int(v == a) for v in range(V)])

    loss = -sum(ct * logpi(s)[a] for ct, (s, a) in zip(c, tokens))
    dW = -_lr * loss.diff(W)  # the SGD update of the parameters
    pi = [sp.Matrix([sp.exp(x) for x in logpi(s)]) for s in range(2)]
    kernel = [_lr * sum((ct * phi[s, :].dot(phi[st, :]) * (e(a) - pi[st]) for ct, (st, a) in zip(c, tokens)),
                        sp.zeros(V, 1)) for s in range(2)]
    return SimpleNamespace(
        direct=[dW * phi[s, :].T for s in range(2)], kernel=kernel,
        tabular=[_lr * c[s] * (e(tokens[s][1]) - pi[s]) for s in range(2)],
        logpi=logpi, pi=pi, phi=phi, c=c, e=e,
    )


@cache
def derive_jvp(V: int = 3) -> Derivation:
    """First-order entropy change and KL of a network update, from dz = J dtheta per token.

    Per token t (state s_t): jvp_cov = Cov_{pi_t}(log pi_t, dz_t), jvp_var = Var_{pi_t}(dz_t), dz_t = J(s_t) dtheta;
      entropy/delta = -jvp_cov            kl/step = jvp_var / 2            (both then averaged over tokens)
    Residuals (log-linear policy z = W phi(s), 2 states): the SGD logit step equals the kernel form
    eta sum_t c_t (phi(s) . phi(s_t)) (e_{a_t} - pi_t), and with one-hot phi it is the tabular step.
    Source: Ren & Sutherland, ICLR 2025, eq. 3-5; Mei et al. 2020 Lemma 2 for the softmax Jacobian.
    """
    net, tab = _kernel_step(V), _kernel_step(V, onehot=True)
    K, J, dth = sp.Function("K"), sp.Function("J"), sp.Symbol(r"\Delta\theta")
    s, st = sp.Symbol("s"), sp.Symbol("s_t")
    return Derivation(
        name="jvp",
        statement=sp.Tuple(sp.Eq(sp.Symbol(r"\Delta H(s)"), -Cov(sp.Symbol(r"\log\pi_s"), J(s) * dth)),
                           sp.Eq(sp.Symbol(r"\mathrm{KL}(s)"), sp.Symbol(r"\mathrm{Var}_{\pi_s}(J(s)\Delta\theta)") / 2)),
        steps=(
            ("kernel form of an SGD step", sp.Eq(J(s) * dth, _lr * sp.Sum(sp.Symbol("c_t") * K(s, st) * sp.Symbol(r"(e_{a_t}-\pi_t)"),
                                                                           (sp.Symbol("t"), 1, sp.Symbol("N"))))),
            ("empirical NTK", sp.Eq(K(s, st), J(s) * sp.Symbol("J(s_t)^T"))),
        ),
        result={"entropy/delta": -STAT["jvp_cov"], "kl/step": STAT["jvp_var"] / 2},
        residuals={
            "SGD step = kernel form": sp.Matrix.hstack(*[a - b for a, b in zip(net.direct, net.kernel)]),
            "one-hot features: SGD step = tabular step": sp.Matrix.hstack(*[a - b for a, b in zip(tab.direct, tab.tabular)]),
        },
        source="Ren & Sutherland, ICLR 2025, eq. 3-5",
    )


@cache
def derive_kernel_crosstalk(V: int = 3) -> Derivation:
    """The gap between the JVP and the tabular-SGD entropy predictions: the kernel's cross-talk.

    entropy/crosstalk = dH_jvp - dH_tabular_sgd (per token, then averaged)
                      = -eta sum_{t'} c_{t'} Cov_{pi_t}(log pi_t, [K(s_t, s_{t'}) - 1[t = t'] I] (e_{a_t'} - pi_{t'}))
    Meaningful for SGD (the tabular step is SGD's); it is 0 when the kernel is the identity over tokens.
    Residual (log-linear, 2 states): the crosstalk of the first state, computed from the kernel form,
    equals the formula with K(s_1, s_2) = phi_1 . phi_2 and K(s_1, s_1) = |phi_1|^2.
    Source: Ren & Sutherland, ICLR 2025, sec. 3 (the off-diagonal kernel terms move unsampled responses).
    """
    net = _kernel_step(V)
    logpi0, pi0 = net.logpi(0), list(net.pi[0])

    def cov0(d: sp.Matrix) -> sp.Expr:  # Cov under pi(.|s_0)
        E = lambda f: sum(q * x for q, x in zip(pi0, f))  # noqa: E731
        return E([a * b for a, b in zip(logpi0, d)]) - E(logpi0) * E(list(d))

    gap = -cov0(net.kernel[0]) + cov0(net.tabular[0])
    phi, c = net.phi, net.c
    formula = -_lr * (c[0] * (phi[0, :].dot(phi[0, :]) - 1) * cov0(net.e(0) - net.pi[0])
                      + c[1] * phi[0, :].dot(phi[1, :]) * cov0(net.e(1) - net.pi[1]))
    tab = derive_tabular_sgd().result["entropy/delta"]
    return Derivation(
        name="kernel_crosstalk",
        statement=sp.Eq(sp.Symbol(r"\Delta H_{jvp} - \Delta H_{tab}"),
                        -_lr * sp.Sum(sp.Symbol("c_{t'}") * Cov(sp.Symbol(r"\log\pi_t"),
                                                                  sp.Symbol(r"(K(s_t,s_{t'}) - \delta_{tt'}I)(e_{a_{t'}}-\pi_{t'})")),
                                      (sp.Symbol("t'"), 1, sp.Symbol("N")))),
        steps=(("tabular prediction (kernel = identity)", tab),),
        result={"entropy/crosstalk": -STAT["jvp_cov"] - tab},
        residuals={"crosstalk of state 1 = off-identity kernel terms": gap - formula},
        source="Ren & Sutherland, ICLR 2025, sec. 3",
    )


ORDERS: dict[str, dict[str, int]] = {
    "jvp": {"entropy/delta": 1, "kl/step": 2},
    "jvp2": {"entropy/delta": 2, "kl/step": 3, "kl/step_reverse": 3},
    "jvp3": {"entropy/delta": 3, "kl/step": 4, "kl/step_reverse": 4},
    "jvp1s": {"entropy/delta": 1, "kl/step": 2, "kl/step_reverse": 2},
}
"""predictor -> metric -> k, the order in dtheta to which the prediction is exact: its residual is
O(eta^(k+1)) for a step dtheta proportional to eta. jvp: dH's eta^2 term is missing (k = 1); KL starts at
eta^2 and its eta^3 term is missing (k = 2). jvp2: the logits miss eta^3 (dz3/6), which moves H by
O(eta^3) (dH/dz is O(1): k = 2) and the KL by O(eta^4) (dKL/dz = pi~ - pi is O(eta): k = 3). jvp3: one
order more (dz4/24 is missing). jvp1s: exact softmax on first-order logits, so dz2 is missing: the orders
of jvp (its point is the decomposition, not a higher order)."""


def residual_order(residuals: Sequence[float], factor: float = 2.0) -> list[float]:
    """Measured order of a residual from its values at eta, eta/factor, eta/factor^2, ...

    slope_i = log(|r_i| / |r_{i+1}|) / log(factor): k + 1 for a k-th order predictor (ORDERS), in the
    asymptotic regime; NaN where a residual is 0 or not finite. The ratio r(eta) / r(eta/2) alone is
    2^slope (4 for first order, 8 for second): read against k + 1 of the predictor, not always 4.
    """
    out = []
    for a, b in zip(residuals[:-1], residuals[1:]):
        a, b = abs(float(a)), abs(float(b))
        ok = a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)
        out.append(math.log(a / b) / math.log(factor) if ok else math.nan)
    return out


@cache
def derive_jvp2(V: int = 3) -> Derivation:
    """Second-order logits along the step, and the exact softmax functionals on them.

    Per token t: z~_t = z_t + dz1_t + dz2_t / 2,  dz1 = J(s_t) dtheta = d/dt z(theta + t dtheta)|0,
    dz2 = dtheta^T (d^2 z / d theta^2) dtheta = d^2/dt^2 z(theta + t dtheta)|0 (forward over forward);
      entropy/delta   = jvp2_dH         = H(softmax z~) - H(softmax z)
      kl/step         = jvp2_kl         = KL(softmax z || softmax z~)
      kl/step_reverse = jvp2_kl_reverse = KL(softmax z~ || softmax z)     (then averaged over tokens)
    Residuals: for a nonlinear 2-parameter-group model z_v = w_v tanh(u x) + u^2 b_v, the first and second
    t-derivatives of z(theta + t delta) are J delta and delta^T Hess delta (what the nested jvp computes);
    on V symbolic logits with z~(t) = z + t d + t^2/2 e, dH's t-term is -Cov(log pi, d) and both KLs'
    t^2-terms are Var(d)/2: jvp's first-order results are the leading terms of this one.
    Source: the Taylor expansion of z(theta) in dtheta (Ren & Sutherland, ICLR 2025, eq. 3 is its first
    term); forward-over-forward AD (Griewank & Walther 2008, ch. 13, univariate Taylor propagation).
    """
    t, x, u, du = sp.symbols("t x u delta_u", real=True)
    w = sp.symbols(f"w1:{V + 1}", real=True)
    b = sp.symbols(f"b1:{V + 1}", real=True)
    dw = sp.symbols(f"delta_w1:{V + 1}", real=True)
    theta, delta = [u, *w], [du, *dw]

    def net(ps):
        uu, ww = ps[0], ps[1:]
        return [ww[v] * sp.tanh(uu * x) + uu**2 * b[v] for v in range(V)]

    moved = net([p + t * d for p, d in zip(theta, delta)])
    z = net(theta)
    J_delta = [sum(zv.diff(p) * d for p, d in zip(theta, delta)) for zv in z]
    hess_q = [sum(zv.diff(p).diff(q) * dp * dq for p, dp in zip(theta, delta) for q, dq in zip(theta, delta))
              for zv in z]
    r_first = sp.Matrix([m.diff(t).subs(t, 0) - j for m, j in zip(moved, J_delta)])
    r_second = sp.Matrix([m.diff(t, 2).subs(t, 0) - h for m, h in zip(moved, hess_q)])

    E = _softmax_on_expansion(V, 2)  # the symbolic softmax on z + t d + t^2/2 e, shared with jvp1s and jvp3
    d = E.ds[0]
    dH, kl, kl_rev = E.functionals(2)
    at0 = E.at0
    cov, var = E.in_q(E.cov(E.lp0, d)), E.in_q(E.cov(d, d))

    Z, dth = sp.Function("z"), sp.Symbol(r"\Delta\theta")
    zt = sp.Symbol(r"\tilde z")
    return Derivation(
        name="jvp2",
        statement=sp.Tuple(
            sp.Eq(zt, Z(sp.Symbol(r"\theta")) + sp.Symbol("dz_1") + sp.Symbol("dz_2") / 2),
            sp.Eq(sp.Symbol(r"\Delta H"), sp.Symbol(r"H(\mathrm{softmax}\,\tilde z) - H(\pi)")),
            sp.Eq(sp.Symbol(r"\mathrm{KL}"), sp.Symbol(r"\mathrm{KL}(\pi\,\|\,\mathrm{softmax}\,\tilde z)"))),
        steps=(
            ("first directional derivative (jvp)", sp.Eq(sp.Symbol("dz_1"), sp.Derivative(Z(sp.Symbol(r"\theta") + sp.Symbol("t") * dth), sp.Symbol("t")))),
            ("second directional derivative (jvp of jvp)",
             sp.Eq(sp.Symbol("dz_2"), sp.Derivative(Z(sp.Symbol(r"\theta") + sp.Symbol("t") * dth), (sp.Symbol("t"), 2)))),
            ("leading terms = jvp", sp.Tuple(sp.Eq(sp.Symbol(r"\Delta H"), -Cov(sp.Symbol(r"\log\pi"), sp.Symbol("dz_1")) + sp.O(dth**2)),
                                             sp.Eq(sp.Symbol(r"\mathrm{KL}"), Var(sp.Symbol("dz_1")) / 2 + sp.O(dth**3)))),
        ),
        result={"entropy/delta": STAT["jvp2_dH"], "kl/step": STAT["jvp2_kl"],
                "kl/step_reverse": STAT["jvp2_kl_reverse"]},
        residuals={
            "d/dt z(theta + t delta) = J delta": r_first,
            "d^2/dt^2 z(theta + t delta) = delta^T Hess delta": r_second,
            "dH on z~: t-term = -Cov(log pi, dz1)": at0(dH, 1) + cov,
            "KL on z~: no t-term, t^2-term = Var(dz1)/2": sp.Matrix([at0(kl, 1), at0(kl, 2) - var / 2]),
            "reverse KL on z~: t^2-term = Var(dz1)/2": at0(kl_rev, 2) - var / 2,
        },
        source="Taylor expansion of the logits in dtheta; Griewank & Walther 2008, ch. 13",
    )


def _softmax_on_expansion(V: int, order: int):
    """Symbolic logits z, derivatives d_1..d_order and the exact functionals on z~(t) = z + sum_k t^k d_k / k!,
    with a helper for t-Taylor coefficients at t = 0 (rational in q = exp z: fast to simplify)."""
    t = sp.Symbol("t", real=True)
    zs = sp.symbols(f"z1:{V + 1}", real=True)
    ds = [sp.symbols(f"d{k}_1:{V + 1}", real=True) for k in range(1, order + 1)]

    def log_softmax(vec):
        lse = sp.log(sum(sp.exp(q) for q in vec))
        return [q - lse for q in vec]

    def functionals(k, skip=()):  # dH, KL(pi || pi~), KL(pi~ || pi) with the logits to order k, minus orders `skip`
        zt = [zv + sum(t**j / sp.factorial(j) * ds[j - 1][v] for j in range(1, k + 1) if j not in skip)
              for v, zv in enumerate(zs)]
        lp0, lp1 = log_softmax(zs), log_softmax(zt)
        p0, p1 = [sp.exp(q) for q in lp0], [sp.exp(q) for q in lp1]
        dH = -sum(q * l for q, l in zip(p1, lp1)) + sum(q * l for q, l in zip(p0, lp0))
        return dH, sum(q * (a - c) for q, a, c in zip(p0, lp0, lp1)), sum(q * (c - a) for q, a, c in zip(p1, lp0, lp1))

    p0 = [sp.exp(q) for q in log_softmax(zs)]
    lp0 = log_softmax(zs)

    def cov(a, b):
        Ea, Eb = sum(q * x for q, x in zip(p0, a)), sum(q * x for q, x in zip(p0, b))
        return sum(q * (x - Ea) * (y - Eb) for q, x, y in zip(p0, a, b))

    q = sp.symbols(f"q1:{V + 1}", positive=True)
    to_q = {zv: sp.log(qv) for zv, qv in zip(zs, q)}

    def at0(f, k):  # the t^k Taylor coefficient at t = 0
        return sp.expand_log((f.diff(t, k).subs(t, 0) / sp.factorial(k)).subs(to_q), force=True)

    def in_q(x):
        return sp.expand_log(x.subs(to_q), force=True)

    return SimpleNamespace(t=t, ds=ds, lp0=lp0, functionals=functionals, cov=cov, at0=at0, in_q=in_q)


@cache
def derive_jvp3(V: int = 2) -> Derivation:
    """Third-order logits along the step, and the exact softmax functionals on them.

    Per token: z~3 = z + dz1 + dz2/2 + dz3/6, dz3 = d^3/dt^3 z(theta + t dtheta)|0 (three nested jvps);
      entropy/delta = jvp3_dH = H(softmax z~3) - H(pi);  kl/step = jvp3_kl = KL(pi || softmax z~3);
      kl/step_reverse = jvp3_kl_reverse = KL(softmax z~3 || pi)          (then averaged over tokens)
    What the third-order term adds to jvp2 (residuals, on V symbolic logits): nothing below t^3 for dH and
    below t^4 for the KL; at those orders -Cov_pi(log pi, dz3)/6 for dH and Cov_pi(dz1, dz3)/6 for both KLs.
    On nano at the trainer's lr 3e-4 jvp2's KL residual is of this size (docs/transfer.md), which is why
    the third order is worth its cost there. Residual after jvp3: O(dtheta^4) for dH, O(dtheta^5) for the KL.
    For the tanh network of derive_jvp2, the third t-derivative of z(theta + t delta) is the third
    directional derivative D^3 z[delta, delta, delta] (what the triple-nested jvp computes).
    Source: Taylor expansion of the logits in dtheta; Griewank & Walther 2008, ch. 13 (univariate Taylor
    propagation by nested forward mode).
    """
    tt, x, u, du = sp.symbols("t x u delta_u", real=True)
    w, dw = sp.symbols("w1:3", real=True), sp.symbols("delta_w1:3", real=True)
    theta, delta = [u, *w], [du, *dw]
    net = [wv * sp.tanh(u * x) + u**3 * wv for wv in w]
    moved = [zv.subs({p: p + tt * d for p, d in zip(theta, delta)}, simultaneous=True) for zv in net]
    d3 = [sum(zv.diff(a).diff(b).diff(c) * da * db * dc for a, da in zip(theta, delta) for b, db in zip(theta, delta)
              for c, dc in zip(theta, delta)) for zv in net]
    r_third = sp.Matrix([m.diff(tt, 3).subs(tt, 0) - h for m, h in zip(moved, d3)])

    E = _softmax_on_expansion(V, 3)
    dH2, dH3 = E.functionals(2)[0], E.functionals(3)[0]
    # dz2 cannot meet dz3 below t^5 in a KL (the KL is quadratic in the logit change to leading order, and
    # dz2 dz3 comes with t^5), so the KL checks leave dz2 out: the same t^4 terms, a far smaller expression
    _, kl2, kr2 = E.functionals(1)
    _, kl3, kr3 = E.functionals(3, skip=(2,))
    d1, _, d3s = E.ds
    add_dH, add_kl = E.in_q(-E.cov(E.lp0, d3s) / 6), E.in_q(E.cov(d1, d3s) / 6)
    zt = sp.Symbol(r"\tilde z_3")
    return Derivation(
        name="jvp3",
        statement=sp.Tuple(
            sp.Eq(zt, sp.Symbol("z") + sp.Symbol("dz_1") + sp.Symbol("dz_2") / 2 + sp.Symbol("dz_3") / 6),
            sp.Eq(sp.Symbol(r"\Delta H"), sp.Symbol(r"H(\mathrm{softmax}\,\tilde z_3) - H(\pi)")),
            sp.Eq(sp.Symbol(r"\mathrm{KL}"), sp.Symbol(r"\mathrm{KL}(\pi\,\|\,\mathrm{softmax}\,\tilde z_3)"))),
        steps=(("what dz3 adds to jvp2", sp.Tuple(
            sp.Eq(sp.Symbol(r"\Delta H_3 - \Delta H_2"), -Cov(sp.Symbol(r"\log\pi"), sp.Symbol("dz_3")) / 6 + sp.O(sp.Symbol("t") ** 4)),
            sp.Eq(sp.Symbol(r"\mathrm{KL}_3 - \mathrm{KL}_2"), Cov(sp.Symbol("dz_1"), sp.Symbol("dz_3")) / 6 + sp.O(sp.Symbol("t") ** 5)))),),
        result={"entropy/delta": STAT["jvp3_dH"], "kl/step": STAT["jvp3_kl"], "kl/step_reverse": STAT["jvp3_kl_reverse"]},
        residuals={
            "d^3/dt^3 z(theta + t delta) = D^3 z[delta, delta, delta]": r_third,
            "dH: dz3 adds nothing below t^3": sp.Matrix([E.at0(dH3 - dH2, k) for k in (1, 2)]),
            "dH: dz3 adds -Cov(log pi, dz3)/6 at t^3": E.at0(dH3 - dH2, 3) - add_dH,
            "KL: dz3 adds nothing below t^4, Cov(dz1, dz3)/6 at t^4": sp.Matrix(
                [E.at0(kl3 - kl2, 3), E.at0(kl3 - kl2, 4) - add_kl]),
            "reverse KL: Cov(dz1, dz3)/6 at t^4": E.at0(kr3 - kr2, 4) - add_kl,
        },
        source="Taylor expansion of the logits in dtheta; Griewank & Walther 2008, ch. 13",
    )


@cache
def derive_jvp1s(V: int = 3) -> Derivation:
    """First-order logits with exact softmax functionals: the first term of the residual decomposition.

    z~1 = z + dz1: entropy/delta = jvp1s_dH = H(softmax z~1) - H(pi), kl/step = jvp1s_kl = KL(pi || softmax z~1).
    It splits what the first-order jvp misses into two parts (docs/transfer.md): the softmax's nonlinearity
    (jvp1s - jvp: the exact functional on the same first-order logits minus its Taylor term) and the logits'
    curvature (jvp2 - jvp1s: what dz2 adds). Residuals: jvp1s's leading terms are jvp's (-Cov(log pi, dz1)
    for dH at t, Var(dz1)/2 for the KL at t^2), and dz2's leading effect is -Cov(log pi, dz2)/2 on dH at t^2
    and Cov(dz1, dz2)/2 on the KL at t^3. Residual after jvp1s: O(dtheta^2) for dH, O(dtheta^3) for the KL.
    Source: Taylor expansion of the logits in dtheta (Ren & Sutherland, ICLR 2025, eq. 3 is its first term).
    """
    E = _softmax_on_expansion(V, 2)
    dH1, kl1, _ = E.functionals(1)
    dH2, kl2, _ = E.functionals(2)
    d1, d2 = E.ds
    return Derivation(
        name="jvp1s",
        statement=sp.Tuple(sp.Eq(sp.Symbol(r"\Delta H"), sp.Symbol(r"H(\mathrm{softmax}(z + dz_1)) - H(\pi)")),
                           sp.Eq(sp.Symbol(r"\mathrm{KL}"), sp.Symbol(r"\mathrm{KL}(\pi\,\|\,\mathrm{softmax}(z + dz_1))"))),
        steps=(("what dz2 adds (the logit curvature)", sp.Tuple(
            sp.Eq(sp.Symbol(r"\Delta H_2 - \Delta H_1"), -Cov(sp.Symbol(r"\log\pi"), sp.Symbol("dz_2")) / 2 + sp.O(sp.Symbol("t") ** 3)),
            sp.Eq(sp.Symbol(r"\mathrm{KL}_2 - \mathrm{KL}_1"), Cov(sp.Symbol("dz_1"), sp.Symbol("dz_2")) / 2 + sp.O(sp.Symbol("t") ** 4)))),),
        result={"entropy/delta": STAT["jvp1s_dH"], "kl/step": STAT["jvp1s_kl"], "kl/step_reverse": STAT["jvp1s_kl_reverse"]},
        residuals={
            "dH t-term = -Cov(log pi, dz1)": E.at0(dH1, 1) + E.in_q(E.cov(E.lp0, d1)),
            "KL: no t-term, t^2-term = Var(dz1)/2": sp.Matrix([E.at0(kl1, 1), E.at0(kl1, 2) - E.in_q(E.cov(d1, d1)) / 2]),
            "dz2 on dH: -Cov(log pi, dz2)/2 at t^2": E.at0(dH2 - dH1, 2) + E.in_q(E.cov(E.lp0, d2)) / 2,
            "dz2 on KL: nothing at t^2, Cov(dz1, dz2)/2 at t^3": sp.Matrix(
                [E.at0(kl2 - kl1, 2), E.at0(kl2 - kl1, 3) - E.in_q(E.cov(d1, d2)) / 2]),
        },
        source="Taylor expansion of the logits in dtheta; Ren & Sutherland, ICLR 2025, eq. 3",
    )


@cache
def derive_jvp_fd() -> Derivation:
    """The finite-difference route to dz2 and dz3 (fd_taylor_logits): two forwards at theta +- h delta and the exact dz1.

    With z(h) = z + h d1 + h^2/2 d2 + h^3/6 d3 + h^4/24 d4 + h^5/120 d5 + O(h^6) along the step:
      (z(h) + z(-h) - 2 z) / h^2 = d2 + h^2 d4 / 12 + O(h^4),
      6 ((z(h) - z(-h)) / (2h) - d1) / h^2 = d3 + h^2 d5 / 20 + O(h^4).
    The residuals are those two identities on the symbolic series (the O(h^6) terms drop out of both).
    Source: central differences (Fornberg 1988, Generation of finite difference formulas on arbitrarily
    spaced grids, Math. Comp. 51), with the first derivative taken exactly from the jvp.
    """
    h = sp.Symbol("h", positive=True)
    z, *d = sp.symbols("z d1:7", real=True)

    def zh(x):
        return z + sum(x**k / sp.factorial(k) * d[k - 1] for k in range(1, 7))

    fd2 = (zh(h) + zh(-h) - 2 * z) / h**2
    fd3 = 6 * ((zh(h) - zh(-h)) / (2 * h) - d[0]) / h**2
    return Derivation(
        name="jvp_fd",
        statement=sp.Tuple(sp.Eq(sp.Symbol("dz_2"), sp.Symbol(r"(z(h) + z(-h) - 2z)/h^2") + sp.O(h**2)),
                           sp.Eq(sp.Symbol("dz_3"), sp.Symbol(r"6((z(h) - z(-h))/(2h) - dz_1)/h^2") + sp.O(h**2))),
        steps=(),
        result={},
        residuals={
            "dz2 stencil = d2 + h^2 d4/12 + h^4 d6/360": sp.expand(fd2 - d[1] - h**2 * d[3] / 12 - h**4 * d[5] / 360),
            "dz3 stencil = d3 + h^2 d5/20": sp.expand(fd3 - d[2] - h**2 * d[4] / 20),
        },
        source="central differences (Fornberg 1988) with the exact first derivative",
    )


@cache
def derive_trust_region() -> Derivation:
    """The KL trust region's step: s* dtheta with KL_jvp2(s*) = delta, so kl/step = delta up to jvp2's error.

    trainer/trust_region.py solves KL(s) = delta by s <- s sqrt(delta / KL(s)) from s = 1; KL(s) is jvp2's
    exact KL on z + s dz1 + s^2/2 dz2 (derive_jvp2), whose residual against the real step is O(s^4 |dtheta|^4).
    Residuals: for the leading-order KL(s) = c s^2 (c = Var(dz1)/2, derive_jvp) one iteration lands on delta
    exactly; for KL(s) = c s^2 + b s^3 the iteration's fixed point satisfies KL = delta.
    Source: Schulman et al. 2015 (TRPO), eq. 12-14: a KL constraint on the step, not a penalty.
    """
    c, b, sc, dl, sv = sp.symbols("c b s_0 delta s", positive=True)
    kl = lambda x: c * x**2  # noqa: E731
    s1 = sc * sp.sqrt(dl / kl(sc))
    kl3 = c * sv**2 + b * sv**3
    return Derivation(
        name="trust_region",
        statement=sp.Eq(sp.Symbol(r"\mathrm{kl/step}"), sp.Symbol(r"\delta") + sp.O(dl**2)),
        steps=(("scale solve", sp.Eq(sp.Symbol("s'"), sp.Symbol("s") * sp.sqrt(sp.Symbol(r"\delta") / sp.Symbol("KL(s)")))),),
        result={"kl/step": STAT["trust_region_kl"]},
        residuals={
            "quadratic KL: one iteration lands on delta": kl(s1) - dl,
            "fixed point s = s sqrt(delta / KL(s)) has KL = delta": (sv * sp.sqrt(dl / kl3) - sv).subs(dl, kl3),
        },
        source="Schulman et al. 2015, Trust Region Policy Optimization, eq. 12-14",
    )


def jvp_logit_change(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None,
                     delta: Mapping[str, Tensor], positions: Tensor, *, return_logits: bool = False):
    """dz = J(s) . delta at the selected positions, by one forward-mode pass (torch.func.jvp).

    model: a causal LM whose forward takes input_ids, attention_mask, position_ids and returns `.logits`
      [B, T, V]; no dropout, and eager or math attention (forward-mode AD fails under CPU SDPA's fused
      kernels: wrap the call in `torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`). A float64 model with
      eager attention and left padding gives NaN in transformers 5 (a padded query row sees no key and its
      float32 softmax of -1.8e308 is NaN, which spreads); math SDPA or float32 does not.
    delta: parameter name -> tangent, a subset of `model.named_parameters()` (others have tangent 0).
    positions: bool [B, T], the logit rows to return (the rows that predict response tokens; rows after
      EOS carry garbage and must be left out).
    Returns dz [N, V] float64 (N = positions.sum()), and also the logits [N, V] float64 at the same rows
    if return_logits (the jvp computes them anyway: no extra forward).
    """
    params = dict(model.named_parameters())
    unknown = [n for n in delta if n not in params]
    if unknown:
        raise KeyError(f"delta names parameters the model does not have: {', '.join(unknown)}")
    names = list(delta)
    primals = tuple(params[n].detach() for n in names)
    tangents = tuple(delta[n].detach().to(params[n].dtype) for n in names)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)

    def logits_at(*ps: Tensor) -> Tensor:
        return functional_call(model, dict(zip(names, ps)), args=(), kwargs=kwargs).logits[positions]

    logits, dz = jvp(logits_at, primals, tangents)
    return (dz.double(), logits.double()) if return_logits else dz.double()


def linearized_stats(logits: Tensor, dz: Tensor) -> tuple[Tensor, Tensor]:
    """(jvp_cov, jvp_var) per row: Cov_pi(log pi, dz) and Var_pi(dz), pi = softmax(logits), float64.

    logits, dz: [N, V] -> two [N] tensors, the contract keys the `jvp` predictor reads.
    """
    m = directional_moments(logits, dz)
    return m["cov"], m["var"]


def jvp_taylor_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None,
                      delta: Mapping[str, Tensor], positions: Tensor, order: int,
                      params: Optional[Mapping[str, Tensor]] = None) -> tuple[Tensor, list[Tensor]]:
    """(logits, [dz1, ..., dz_order]) at the selected rows, float64 [N, V]: dz_k = d^k/dt^k z(theta + t delta)|0.

    Nested forward-mode AD: f_1 = jvp(logits, ., delta); f_k = jvp(f_(k-1), ., delta), whose tangent
    outputs are the next derivative (Griewank & Walther 2008, ch. 13). Each level doubles the number of
    forward values carried, so order k costs about 2^k forwards' worth of activations (bench/jvp_cost.py
    measures it). Model requirements as jvp_logit_change (eager or math attention; rows after EOS left out
    of `positions`). params: the point theta to expand at, name -> tensor for the names in delta (default:
    the model's current parameters), so a caller holding theta_after in the model can expand at
    theta_before without copying weights in and out.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    named = dict(model.named_parameters())
    unknown = [n for n in delta if n not in named]
    if unknown:
        raise KeyError(f"delta names parameters the model does not have: {', '.join(unknown)}")
    names = list(delta)
    at = named if params is None else params
    primals = tuple(at[n].detach() for n in names)
    tangents = tuple(delta[n].detach().to(named[n].dtype) for n in names)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)

    def logits_at(*ps: Tensor) -> tuple[Tensor, ...]:
        return (functional_call(model, dict(zip(names, ps)), args=(), kwargs=kwargs).logits[positions],)

    def lift(f):
        # g(theta) = (f(theta), d/dt f(theta + t delta)): every derivative f carried, plus its own derivatives
        def g(*ps: Tensor) -> tuple[Tensor, ...]:
            vals, tans = jvp(f, ps, tangents)
            return (*vals, tans[-1])
        return g

    f = logits_at
    for _ in range(order):
        f = lift(f)
    # f returns (z, dz1, dz2, ...): each lift appends the derivative of the last entry, so entry k is d^k z
    out = f(*primals)
    return out[0].double(), [d.double() for d in out[1:]]


def fd_taylor_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None,
                     delta: Mapping[str, Tensor], positions: Tensor, h: float = 0.25,
                     params: Optional[Mapping[str, Tensor]] = None) -> tuple[Tensor, list[Tensor]]:
    """(logits, [dz1, dz2, dz3]) float64 [N, V]: dz1 exact by one jvp, dz2 and dz3 from two forwards at theta +- h delta.

    With z(+-h) = z(theta +- h delta) = z +- h dz1 + h^2/2 dz2 +- h^3/6 dz3 + h^4/24 dz4 +- ... (Taylor in h):
      dz2 = (z(+h) + z(-h) - 2 z) / h^2                 - h^2 dz4 / 12  + O(h^4)
      dz3 = 6 ((z(+h) - z(-h)) / (2h) - dz1) / h^2       - h^2 dz5 / 20  + O(h^4)
    (central differences that use the exact dz1; derive_jvp_fd checks both). The cost is the first-order jvp
    plus two forwards, against 12 and 38 forwards for the nested jvp2 and jvp3 on nano (bench/jvp_cost.py).
    Rounding: float32 logits carry ~1e-7 |z| of noise, amplified by 2 / h^2 in dz2 and 6 / h^3 in dz3 (at the
    default h = 1/4: 32x and 384x, i.e. ~1e-4 nats in dz3 for |z| ~ 3, averaged down by the batch mean);
    truncation: h^2 / 12 = 0.5% of dz4 and h^2 / 20 of dz5. h is a fraction of the step: theta + h delta lies
    on the segment to the step's end, but the functionals are evaluated on the expanded logits at the step's
    end, not on a forward there. Model requirements as jvp_logit_change. params: the point to expand at.
    """
    if not 0 < h <= 1:
        raise ValueError(f"h must be in (0, 1], got {h}")
    named = dict(model.named_parameters())
    at = named if params is None else params
    names = list(delta)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    logits, (dz1,) = jvp_taylor_logits(model, input_ids, attention_mask, position_ids, delta, positions, 1, params=params)

    def z_at(sign: float) -> Tensor:
        moved = {n: at[n].detach() + sign * h * delta[n].detach().to(named[n].dtype) for n in names}
        with torch.no_grad():
            return functional_call(model, moved, args=(), kwargs=kwargs).logits[positions].double()

    zp, zm = z_at(1.0), z_at(-1.0)
    dz2 = (zp + zm - 2 * logits) / h**2
    dz3 = 6 * ((zp - zm) / (2 * h) - dz1) / h**2
    return logits, [dz1, dz2, dz3]


def jvp2_logit_change(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None,
                      delta: Mapping[str, Tensor], positions: Tensor,
                      params: Optional[Mapping[str, Tensor]] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, dz1, dz2) at the selected rows, float64 [N, V], by forward-over-forward AD.

    dz1 = J delta and dz2 = d^2/dt^2 z(theta + t delta)|0: jvp_taylor_logits at order 2 (derive_jvp2).
    """
    logits, (dz1, dz2) = jvp_taylor_logits(model, input_ids, attention_mask, position_ids, delta, positions, 2,
                                           params=params)
    return logits, dz1, dz2


def taylor_stats(logits: Tensor, dzs: Sequence[Tensor], scale: float | Tensor = 1.0,
                 prefix: str = "") -> dict[str, Tensor]:
    """<prefix>dH, <prefix>kl, <prefix>kl_reverse per row [N], exact softmax functionals on the expanded logits

    z~ = z + sum_k s^k dz_k / k!  (dzs = [dz1, dz2, ...], float64):  dH = H(softmax z~) - H(softmax z),
    kl = KL(softmax z || softmax z~), kl_reverse = KL(softmax z~ || softmax z). scale s: the same
    expansion for the step s dtheta (the trust region's search; s = 1 is the step taken).
    """
    z = logits.double()
    zt = z
    for k, dz in enumerate(dzs, 1):
        zt = zt + scale**k / math.factorial(k) * dz.double()
    l0, l1 = torch.log_softmax(z, -1), torch.log_softmax(zt, -1)
    p0, p1 = l0.exp(), l1.exp()
    return {f"{prefix}dH": (p0 * l0).sum(-1) - (p1 * l1).sum(-1), f"{prefix}kl": (p0 * (l0 - l1)).sum(-1),
            f"{prefix}kl_reverse": (p1 * (l1 - l0)).sum(-1)}


def expanded_stats(logits: Tensor, dz1: Tensor, dz2: Tensor, scale: float | Tensor = 1.0) -> dict[str, Tensor]:
    """jvp2_dH, jvp2_kl, jvp2_kl_reverse per row [N], exact on z~ = z + s dz1 + s^2/2 dz2 (taylor_stats)."""
    return taylor_stats(logits, [dz1, dz2], scale, prefix="jvp2_")


def logit_order_stats(logits: Tensor, dzs: Sequence[Tensor]) -> dict[str, Tensor]:
    """Per-row stats of every logit order the nested pass computed (dzs = [dz1, ..., dzk], k >= 2):
    jvp1s_* (exact softmax on z + dz1: the first order's softmax nonlinearity), jvp2_* (z + dz1 + dz2/2),
    and jvp3_* when k >= 3 (z + dz1 + dz2/2 + dz3/6). The differences between consecutive ones are the
    residual's decomposition: softmax nonlinearity (jvp1s - jvp), logit curvature (jvp2 - jvp1s), the
    third-order logit term (jvp3 - jvp2)."""
    out = taylor_stats(logits, dzs[:1], prefix="jvp1s_")
    for k, name in ((2, "jvp2_"), (3, "jvp3_")):
        if len(dzs) >= k:
            out.update(taylor_stats(logits, dzs[:k], prefix=name))
    return out

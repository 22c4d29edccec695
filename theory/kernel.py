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
Left out: second-order (curvature) terms of the network, and the kernel matrix itself (never formed).

References: Ren & Sutherland, "Learning Dynamics of LLM Finetuning", ICLR 2025, eq. 3-5 (the
per-step decomposition dlog pi = -eta A K G); Jacot et al. 2018 (neural tangent kernel).
"""
from __future__ import annotations

from functools import cache
from types import SimpleNamespace
from typing import Mapping

import sympy as sp
from torch import Tensor, nn
from torch.func import functional_call, jvp

from solidrl.theory.derivation import STAT, Cov, Derivation
from solidrl.theory.entropy import derive_tabular_sgd, directional_moments

__all__ = ["derive_jvp", "derive_kernel_crosstalk", "jvp_logit_change", "linearized_stats"]

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

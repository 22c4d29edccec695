"""KL estimators k1, k2, k3 (Schulman 2020): bias, variance, and the gradient each one induces.

Tokens x ~ pi (the policy), rho = pi_ref(x) / pi(x); the target is KL(pi || pi_ref) = E_pi[-log rho].
  k1 = -log rho            unbiased, can be negative
  k2 = (log rho)^2 / 2     >= 0, biased: E k2 - KL = -eps^3/6 E(d - E d)^3 + O(eps^4)
  k3 = rho - 1 - log rho   unbiased and >= 0 pointwise (log x <= x - 1)
where pi_ref = softmax(z + eps d) when pi = softmax(z) (the reference is one step away).

Derivations:
  kl_estimators  bias and variance of each, exactly (E, on the simplex) and to leading order in eps
  kl_gradients   the gradient each induces in the policy logits, used as a loss (gradient through
                 log pi(x), x ~ sg(pi) or ~ mu) or as a reward penalty (score function, k stop-gradient)

Left out: the coefficient beta, and where the trainer puts the KL (its choice; both are derived here).
References: Schulman 2020, "Approximating KL Divergence" (blog); Tang & Munos 2025, "On a few pitfalls in
KL divergence gradient estimation for RL" (k1/k2/k3 as loss vs reward); Mei et al. 2020 Lemma 2.
"""
from __future__ import annotations

from functools import cache

import sympy as sp

from solidrl.theory.derivation import Derivation, Softmax

__all__ = ["derive_kl_estimators", "derive_kl_gradients"]

eps = sp.Symbol("epsilon", positive=True)


def _taylor(f: sp.Expr, n: int) -> list[sp.Expr]:
    """[f(0), f'(0), f''(0)/2, ..., f^(n)(0)/n!] in eps."""
    out = []
    for j in range(n + 1):
        out.append(f.subs(eps, 0) / sp.factorial(j))
        f = f.diff(eps)
    return out


def _mul(a: list, b: list) -> list:
    """Product of two truncated series (same length)."""
    return [sum(a[i] * b[j - i] for i in range(j + 1)) for j in range(len(a))]


def _estimators(log_rho: sp.Expr) -> dict[str, sp.Expr]:
    return {"k1": -log_rho, "k2": log_rho**2 / 2, "k3": sp.exp(log_rho) - 1 - log_rho}


@cache
def derive_kl_estimators(V: int = 3) -> Derivation:
    """Bias and variance of k1, k2, k3 for a reference one logit step away: pi_ref = softmax(z + eps d).

    Exact: E_pi k1 = E_pi k3 = KL(pi || pi_ref); E_pi k2 = 1/2 E_pi (log rho)^2.
    Leading order in eps (Taylor coefficients at eps = 0, with dc = d - E_pi d):
      KL = eps^2/2 Var(d) + eps^3/6 E dc^3;   bias(k2) = -eps^3/6 E dc^3 + O(eps^4)
      Var(k1) = eps^2 Var(d) + O(eps^3)  (relative std ~ 1/eps: k1 is noisy exactly where KL is small)
      Var(k2), Var(k3) = eps^4/4 Var(dc^2) + O(eps^5)
    Residuals check each for a concrete V. Result: the expectations, in p1..pV, d1..dV, epsilon.
    Source: Schulman 2020 (blog); the eps-expansion is derive_softmax_expansion's.
    """
    sm = Softmax(V)
    d = sp.symbols(f"d1:{V + 1}", real=True)
    Z = sum(q * sp.exp(eps * dv) for q, dv in zip(sm.p, d))
    log_rho = [eps * dv - sp.log(Z) for dv in d]  # log pi_ref(x) - log pi(x)
    ks = {n: [_estimators(lr)[n] for lr in log_rho] for n in ("k1", "k2", "k3")}
    KL = sm.E(ks["k1"])
    # Taylor coefficients to eps^4: per token from log rho (sympy derivatives at 0), then truncated
    # products: k2 = x^2/2, k3 = x^2/2 + x^3/6 + x^4/24 (x = log rho = O(eps)); far faster than
    # differentiating the variances themselves.
    x = [_taylor(lr, 4) for lr in log_rho]
    x2 = [_mul(a, a) for a in x]
    x3 = [_mul(a, b) for a, b in zip(x2, x)]
    series = {"k1": [[-c for c in a] for a in x], "k2": [[c / 2 for c in a] for a in x2],
              "k3": [[u / 2 + v / 6 + w / 24 for u, v, w in zip(a, b, _mul(a, a))] for a, b in zip(x2, x3)]}

    def E(s):  # series of E_pi[f] from the per-token series of f
        return [sm.E([a[j] for a in s]) for j in range(5)]

    def var(s):
        return [e2 - ee for e2, ee in zip(E([_mul(a, a) for a in s]), _mul(E(s), E(s)))]

    dc = [dv - sm.E(d) for dv in d]
    var_d, skew, var_dc2 = sm.var(d), sm.E([v**3 for v in dc]), sm.var([v**2 for v in dc])
    pi_ref = [q * sp.exp(eps * dv) / Z for q, dv in zip(sm.p, d)]
    kl_s, bias2 = E(series["k1"]), [a - b for a, b in zip(E(series["k2"]), E(series["k1"]))]
    res = {
        "E k3 = KL (since E rho = 1)": sm.on_simplex(sm.E(ks["k3"]) - KL - (sum(pi_ref) - 1)),
        "KL: eps^2 coefficient Var(d)/2": sm.on_simplex(kl_s[2] - var_d / 2),
        "bias(k2): eps^2 coefficient 0": sm.on_simplex(bias2[2]),
        "bias(k2): eps^3 coefficient -E dc^3/6": sm.on_simplex(bias2[3] + skew / 6),
        "Var(k1): eps^2 coefficient Var(d)": sm.on_simplex(var(series["k1"])[2] - var_d),
    }
    for n in ("k2", "k3"):
        v = var(series[n])
        res[f"Var({n}): eps^2, eps^3 coefficients 0"] = sp.Matrix([sm.on_simplex(v[j]) for j in (2, 3)])
        res[f"Var({n}): eps^4 coefficient Var(dc^2)/4"] = sm.on_simplex(v[4] - var_dc2 / 4)
    x = sp.Symbol("x", positive=True)
    f = x - 1 - sp.log(x)
    res["k3 >= 0: f(1) = 0, f'(1) = 0, f'' = 1/x^2 > 0"] = sp.Matrix([f.subs(x, 1), f.diff(x).subs(x, 1),
                                                                     f.diff(x, 2) - 1 / x**2])
    K = sp.Symbol("KL")
    return Derivation(
        name="kl_estimators",
        statement=sp.Tuple(sp.Eq(sp.Symbol(r"\mathbb{E}k_1"), K), sp.Eq(sp.Symbol(r"\mathbb{E}k_3"), K),
                           sp.Eq(sp.Symbol(r"\mathbb{E}k_2 - KL"), -eps**3 / 6 * sp.Symbol(r"\mathbb{E}d_c^3") + sp.O(eps**4))),
        steps=(("estimators", sp.Tuple(*(sp.Eq(sp.Symbol(n), e) for n, e in _estimators(sp.Symbol(r"\log\rho")).items()))),
               ("k3 is nonnegative", sp.Eq(sp.Symbol("f(x)"), f))),
        result={"KL": KL, **{f"E {n}": sm.E(v) for n, v in ks.items()}},
        residuals=res,
        source="Schulman 2020, Approximating KL Divergence",
        symbols={"epsilon": eps, **{str(s): s for s in (*sm.p, *d)}},
    )


def _grad(sm: Softmax, f) -> sp.Matrix:
    """d f / d z for f a function of the probabilities p, by the softmax Jacobian diag(p) - p p^T (Mei Lemma 2).

    f: [V] -> scalar given as an expression in sm.p; the p are treated as free (then put on the simplex).
    """
    J = sp.diag(*sm.p) - sp.Matrix(sm.p) * sp.Matrix(sm.p).T
    return J * sp.Matrix([f.diff(q) for q in sm.p])


@cache
def derive_kl_gradients(V: int = 3) -> Derivation:
    """The logit gradient each estimator induces, as a loss and as a reward penalty; on- and off-policy.

    pi = softmax(z), reference r, behaviour mu (all [V] on the simplex), score s_x = d log pi(x)/dz = e_x - pi.
    As a loss, on-policy (x ~ sg(pi), gradient through log pi(x) only):
      k1: E_pi[s_x] = 0          k2: E_pi[log(pi/r) s_x] = grad KL(pi||r)     k3: E_pi[(1 - r/pi) s_x] = grad KL(r||pi)
    As a reward penalty (score-function gradient E_pi[k(x) s_x], k stop-gradient):
      k1: grad KL(pi||r)         k2: grad E_pi k2 - grad KL(pi||r)            k3: grad KL(pi||r) - grad KL(r||pi)
    As a loss, off-policy (x ~ mu, no importance weight):
      k1: E_mu[s_x] = -grad KL(mu||pi)   (minimizing it ascends KL(mu||pi): it pushes pi away from the behaviour
          policy, whatever r is);
      with the weight pi/mu each loss gradient is its on-policy one again.
    Residuals check every line for a concrete V. Source: Schulman 2020; Tang & Munos 2025, sec. 3-4.
    """
    pi, ref, mu = Softmax(V, "p"), Softmax(V, "r"), Softmax(V, "m")
    p, r, m = pi.p, ref.p, mu.p
    s = [sp.Matrix(pi.onehot(x)) - sp.Matrix(p) for x in range(V)]
    lr = [sp.log(p[x]) - sp.log(r[x]) for x in range(V)]  # log(pi/r)
    ks = {"k1": lr, "k2": [v**2 / 2 for v in lr], "k3": [r[x] / p[x] - 1 + lr[x] for x in range(V)]}
    # d k(x) / d log pi(x): what a loss passes back through log pi(x)
    dk = {"k1": [1] * V, "k2": lr, "k3": [1 - r[x] / p[x] for x in range(V)]}

    def E(w, vecs):
        return sum((wx * v for wx, v in zip(w, vecs)), sp.zeros(V, 1))

    kl_pr = _grad(pi, sum(p[x] * lr[x] for x in range(V)))
    kl_rp = _grad(pi, -sum(r[x] * sp.log(p[x]) for x in range(V)))
    kl_mp = _grad(pi, -sum(m[x] * sp.log(p[x]) for x in range(V)))
    e_k2 = _grad(pi, sum(p[x] * ks["k2"][x] for x in range(V)))
    loss = {n: E([p[x] * dk[n][x] for x in range(V)], s) for n in ks}
    reward = {n: E([p[x] * ks[n][x] for x in range(V)], s) for n in ks}
    off = {n: E([m[x] * dk[n][x] for x in range(V)], s) for n in ks}
    off_is = {n: E([m[x] * (p[x] / m[x]) * dk[n][x] for x in range(V)], s) for n in ks}
    simplex = {p[-1]: 1 - sum(p[:-1]), r[-1]: 1 - sum(r[:-1]), m[-1]: 1 - sum(m[:-1])}
    claims = {
        "loss k1 = 0": loss["k1"],
        "loss k2 = grad KL(pi||r)": loss["k2"] - kl_pr,
        "loss k3 = grad KL(r||pi)": loss["k3"] - kl_rp,
        "reward k1 = grad KL(pi||r)": reward["k1"] - kl_pr,
        "reward k2 = grad E k2 - grad KL(pi||r)": reward["k2"] - (e_k2 - kl_pr),
        "reward k3 = grad KL(pi||r) - grad KL(r||pi)": reward["k3"] - (kl_pr - kl_rp),
        "off-policy loss k1 = -grad KL(mu||pi)": off["k1"] + kl_mp,
        "off-policy loss with weight pi/mu = on-policy loss": sp.Matrix.hstack(*(off_is[n] - loss[n] for n in ks)),
    }
    g = sp.Function(r"\nabla")
    return Derivation(
        name="kl_gradients",
        statement=sp.Tuple(sp.Eq(sp.Symbol(r"\nabla_{loss}k_1"), 0),
                           sp.Eq(sp.Symbol(r"\nabla_{loss}k_2"), g(sp.Symbol(r"KL(\pi\|\pi_{ref})"))),
                           sp.Eq(sp.Symbol(r"\nabla_{loss}k_3"), g(sp.Symbol(r"KL(\pi_{ref}\|\pi)")))),
        steps=(("score of a softmax", sp.Eq(sp.Symbol(r"\partial\log\pi(x)/\partial z"), sp.Symbol(r"e_x - \pi"))),),
        result={f"{kind} {n}": v for kind, d in (("loss", loss), ("reward", reward), ("off-policy loss", off))
                for n, v in d.items()},
        residuals={k: v.subs(simplex) for k, v in claims.items()},
        source="Schulman 2020; Tang & Munos 2025 sec. 3-4",
        symbols={str(x): x for x in (*p, *r, *m)},
    )

"""The value a derivation returns, the symbols of the batch statistics, and the softmax toolkit.

A derivation is a function `derive_<name>(...) -> Derivation`: the general statement, the steps
that lead to it, the result as expressions in the batch-statistics symbols (one per metric the
predictor `<name>` returns), and residuals: expressions that are identically 0 exactly when the
claim holds for the concrete case the function was asked for (a vocabulary size, a group size).
`Derivation.verify()` simplifies them; the tests assert every one is 0.

Left out: proofs for a general vocabulary size (sympy checks concrete sizes; the numeric tests
cover large ones), and any parsing of user strings (`lambdify` runs only on our own expressions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import sympy as sp

__all__ = ["Derivation", "STAT", "Softmax", "Cov", "Var", "O"]

# Abstract operators, for statements only (the residuals use the concrete sums).
Cov = sp.Function("Cov")
Var = sp.Function("Var")
O = sp.Order

# One symbol per batch-statistics key of docs/contracts.md; the name is the key, so a result's
# free symbols say which stats a predictor needs.
STAT: dict[str, sp.Symbol] = {
    "logp": sp.Symbol("logp", negative=True),
    "entropy": sp.Symbol("entropy", nonnegative=True),
    "sum_p2": sp.Symbol("sum_p2", positive=True),
    "sum_p2_logp": sp.Symbol("sum_p2_logp", nonpositive=True),
    "sum_p3": sp.Symbol("sum_p3", positive=True),
    "coef": sp.Symbol("coef", real=True),
    "lr": sp.Symbol("lr", positive=True),
    "jvp_cov": sp.Symbol("jvp_cov", real=True),
    "jvp_var": sp.Symbol("jvp_var", nonnegative=True),
    "jvp2_dH": sp.Symbol("jvp2_dH", real=True),
    "jvp2_kl": sp.Symbol("jvp2_kl", nonnegative=True),
    "jvp2_kl_reverse": sp.Symbol("jvp2_kl_reverse", nonnegative=True),
    "jvp3_dH": sp.Symbol("jvp3_dH", real=True),
    "jvp3_kl": sp.Symbol("jvp3_kl", nonnegative=True),
    "jvp3_kl_reverse": sp.Symbol("jvp3_kl_reverse", nonnegative=True),
    "jvp1s_dH": sp.Symbol("jvp1s_dH", real=True),
    "jvp1s_kl": sp.Symbol("jvp1s_kl", nonnegative=True),
    "jvp1s_kl_reverse": sp.Symbol("jvp1s_kl_reverse", nonnegative=True),
    "trust_region_kl": sp.Symbol("trust_region_kl", nonnegative=True),
}

_LATEX = {
    STAT["logp"]: r"\log\pi(a)",
    STAT["entropy"]: "H",
    STAT["sum_p2"]: r"{\textstyle\sum_v}\pi_v^2",
    STAT["sum_p2_logp"]: r"{\textstyle\sum_v}\pi_v^2\log\pi_v",
    STAT["sum_p3"]: r"{\textstyle\sum_v}\pi_v^3",
    STAT["coef"]: "c",
    STAT["lr"]: r"\eta",
    STAT["jvp_cov"]: r"\mathrm{Cov}_\pi(\log\pi, J\Delta\theta)",
    STAT["jvp_var"]: r"\mathrm{Var}_\pi(J\Delta\theta)",
    STAT["jvp2_dH"]: r"H(\tilde\pi) - H(\pi)",
    STAT["jvp2_kl"]: r"\mathrm{KL}(\pi\|\tilde\pi)",
    STAT["jvp2_kl_reverse"]: r"\mathrm{KL}(\tilde\pi\|\pi)",
    STAT["jvp3_dH"]: r"H(\tilde\pi_3) - H(\pi)",
    STAT["jvp3_kl"]: r"\mathrm{KL}(\pi\|\tilde\pi_3)",
    STAT["jvp3_kl_reverse"]: r"\mathrm{KL}(\tilde\pi_3\|\pi)",
    STAT["jvp1s_dH"]: r"H(\tilde\pi_1) - H(\pi)",
    STAT["jvp1s_kl"]: r"\mathrm{KL}(\pi\|\tilde\pi_1)",
    STAT["jvp1s_kl_reverse"]: r"\mathrm{KL}(\tilde\pi_1\|\pi)",
    STAT["trust_region_kl"]: r"\delta",
}


def _text(s: str) -> str:
    """Escape a plain string for LaTeX text mode (names and claims hold _ ^ # % &)."""
    for ch, esc in (("_", r"\_"), ("^", r"\^{}"), ("#", r"\#"), ("%", r"\%"), ("&", r"\&")):
        s = s.replace(ch, esc)
    return s


def _is_zero(expr: sp.Basic) -> bool:
    if isinstance(expr, sp.MatrixBase):
        return all(_is_zero(e) for e in expr)
    e = sp.expand(expr)
    # cancel (exact, for rational functions of the symbols and of the logs in them) settles most residuals
    # in a tenth of simplify's time; simplify stays as the fallback for what cancel cannot reduce
    return e == 0 or sp.cancel(e) == 0 or sp.simplify(e) == 0


@dataclass(frozen=True)
class Derivation:
    """What `derive_<name>` returns; `name` is the predictor / notebook section / test stem."""

    name: str
    statement: sp.Basic
    """The general claim (may use the abstract Cov, Var and O)."""
    steps: tuple[tuple[str, sp.Basic], ...]
    """(what this step does, the expression) in reading order."""
    result: Mapping[str, sp.Expr]
    """metric name -> expression; per token in the STAT symbols unless the docstring says otherwise."""
    residuals: Mapping[str, sp.Basic]
    """claim -> expression that is identically 0 for the concrete case iff the claim holds."""
    source: str
    symbols: Mapping[str, sp.Symbol] = field(default_factory=dict)
    """Extra symbols of the result (beyond STAT) by name, for lambdify."""

    def verify(self) -> dict[str, bool]:
        """claim -> whether its residual simplifies to 0."""
        return {k: _is_zero(v) for k, v in self.residuals.items()}

    def lambdify(self, metric: str, args: Sequence[sp.Symbol]) -> Callable:
        """The result for `metric` as a numpy function of `args` (our own expression, never a user string)."""
        return sp.lambdify(list(args), self.result[metric], modules="numpy")

    def latex(self) -> str:
        names = dict(_LATEX)
        parts = [rf"\textbf{{{_text(self.name)}}}:\quad " + sp.latex(self.statement, symbol_names=names)]
        parts += [rf"\text{{{_text(what)}}}:\quad " + sp.latex(e, symbol_names=names) for what, e in self.steps]
        parts += [rf"\text{{{_text(k)}}} = " + sp.latex(v, symbol_names=names) for k, v in self.result.items()]
        return "$$\\begin{gathered}" + r"\\[4pt]".join(parts) + r"\end{gathered}$$"

    def _repr_latex_(self) -> str:
        return self.latex()


class Softmax:
    """A concrete softmax over V tokens with symbolic probabilities p_1..p_V > 0 on the simplex.

    Everything is written in p (not logits): the logit step z -> z + eps d moves the policy along
    pi_v(eps) = p_v exp(eps d_v) / sum_u p_u exp(eps d_u). `on_simplex(expr)` substitutes
    p_V = 1 - sum_{v<V} p_v, the constraint every identity below needs.
    """

    def __init__(self, V: int, prefix: str = "p"):
        if V < 2:
            raise ValueError(f"a softmax needs V >= 2 tokens, got {V}")
        self.V = V
        self.p = sp.symbols(f"{prefix}1:{V + 1}", positive=True)
        self.logp = [sp.log(q) for q in self.p]
        self.H = -self.E(self.logp)

    def E(self, f: Sequence[sp.Expr]) -> sp.Expr:
        """E_{v~pi}[f(v)]."""
        return sum(q * fv for q, fv in zip(self.p, f))

    def cov(self, f: Sequence[sp.Expr], g: Sequence[sp.Expr]) -> sp.Expr:
        return self.E([a * b for a, b in zip(f, g)]) - self.E(f) * self.E(g)

    def var(self, f: Sequence[sp.Expr]) -> sp.Expr:
        return self.cov(f, f)

    def onehot(self, a: int) -> list[sp.Integer]:
        return [sp.Integer(int(v == a)) for v in range(self.V)]

    def on_simplex(self, expr: sp.Basic) -> sp.Basic:
        return expr.subs(self.p[-1], 1 - sum(self.p[:-1]))

    def stats_of(self, a: int) -> dict[sp.Symbol, sp.Expr]:
        """STAT symbol -> its value for this policy and sampled token a (docs/contracts.md keys)."""
        return {
            STAT["logp"]: self.logp[a],
            STAT["entropy"]: self.H,
            STAT["sum_p2"]: self.E(self.p),
            STAT["sum_p2_logp"]: self.E([q * lq for q, lq in zip(self.p, self.logp)]),
            STAT["sum_p3"]: self.E([q**2 for q in self.p]),
        }

    def matches(self, stat_form: sp.Expr, direct: sp.Expr, a: int) -> sp.Expr:
        """Residual of `stat_form` (in STAT symbols) against `direct` (in p), on the simplex."""
        return self.on_simplex(stat_form.subs(self.stats_of(a)) - direct)

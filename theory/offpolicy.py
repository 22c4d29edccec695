"""Off-policy: the importance ratio's two factors, PPO's clip fraction, and the TIS / IcePop corrections.

The ratio that corrects a token sampled by the inference engine mu for the policy being trained pi_theta
splits in two (MiniRL):
  pi_theta(a) / mu_old(a) = [pi_theta(a) / pi_old(a)]   x   [pi_old(a) / mu_old(a)]
                             staleness (policy lag)         mismatch (training vs inference numerics)
The contract's `log_ratio` is the log of the mismatch factor. Every prediction below models a per-token
log-ratio as Gaussian, X ~ N(m, s^2) (m, s: the mean and std of the batch's log-ratios), so a ratio
e^X is lognormal; heavy tails beyond that model are what a refuted prediction would reveal.

Derivations (each pairs with the predictor of the same name):
  ratio_decomposition  the two factors, Var(log ratio), and the staleness spread after one step: s^2 = 2 KL_step
  clip_frac            P(clip active) = f+ P(e^X > 1 + eps_high) + f- P(e^X < 1 - eps_low)
  tis                  w = min(e^X, C): touched P(e^X > C), E w = E e^X - E (e^X - C)_+
  icepop               w = e^X 1[alpha <= e^X <= beta]: touched P(e^X < alpha) + P(e^X > beta)
  tis_two_sided        w = clamp(e^X, l, C): touched P(e^X < l) + P(e^X > C)
  seq_tis              w_b = min(prod_t rho_t, C): a row of L tokens touched w.p. P(N(L m, L s^2) > log C)
  masked_seq_is, geo_rs  rows rejected on their geometric-mean ratio, mean log-ratio ~ N(m, s^2 / L)

The sequence-level ones assume independent tokens; tokens of one sequence are correlated in practice
(one policy lag for the whole row), which widens a row's spread and, with thresholds beyond the mean, raises the touched fraction above the prediction.
References: Zheng et al. 2025, MiniRL, "Stabilizing Reinforcement Learning with LLMs: Formulation and
Practices" (arXiv 2512.01374), sec. 2-3; Schulman et al. 2017, PPO, eq. 7; Yao et al. 2025 (TIS blog);
Ling Team 2025, Ring-1T (arXiv 2510.18855), IcePop.
"""
from __future__ import annotations

from functools import cache

import sympy as sp

from solidrl.theory.derivation import Derivation, Softmax, Var

__all__ = ["derive_ratio_decomposition", "derive_clip_frac", "derive_tis", "derive_icepop", "GAUSS",
           "derive_tis_two_sided", "derive_seq_tis", "derive_masked_seq_is", "derive_geo_rs"]

m = sp.Symbol("m", real=True)  # mean of the per-token log-ratio
s = sp.Symbol("s", positive=True)  # its standard deviation
GAUSS = {"m": m, "s": s}
_u, _b = sp.Symbol("u", real=True), sp.Symbol("b", real=True)
_phi = sp.exp(-(_u**2) / 2) / sp.sqrt(2 * sp.pi)  # standard normal density; X = m + s u


def Phi(z: sp.Expr) -> sp.Expr:
    """Standard normal CDF."""
    return (1 + sp.erf(z / sp.sqrt(2))) / 2


@cache
def _std_integrals() -> tuple[sp.Expr, sp.Expr]:
    """(P(U > b), E[e^{s U} 1(U > b)]) for U ~ N(0, 1), by sympy integration (the residuals' reference)."""
    tail = sp.integrate(_phi, (_u, _b, sp.oo)).rewrite(sp.erf)  # sympy answers in erfc; compare in erf
    return tail, sp.simplify(sp.integrate(sp.exp(s * _u) * _phi, (_u, _b, sp.oo)).rewrite(sp.erf))


def _tail(a: sp.Expr) -> sp.Expr:
    """P(X > a), X ~ N(m, s^2)."""
    return _std_integrals()[0].subs(_b, (a - m) / s)


def _ratio_tail_mean(a: sp.Expr) -> sp.Expr:
    """E[e^X 1(X > a)], X ~ N(m, s^2)."""
    return sp.exp(m) * _std_integrals()[1].subs(_b, (a - m) / s)


def _log_thresholds(*names: str) -> dict[sp.Symbol, sp.Expr]:
    """threshold symbol -> exp(log-threshold symbol): residuals in log thresholds simplify (log(e^c) = c)."""
    return {sp.Symbol(n, positive=True): sp.exp(sp.Symbol(f"log_{n}", real=True)) for n in names}


@cache
def derive_ratio_decomposition(V: int = 3) -> Derivation:
    """log rho = (log pi_theta - log pi_old) + (log pi_old - log mu): staleness + mismatch, and their spread.

    Var(log rho) = Var(stale) + Var(mismatch) + 2 Cov(stale, mismatch).
    After one logit step z -> z + eps d from pi_old, the staleness log-ratio of a token a ~ pi_old is
    eps (d_a - E d) + O(eps^2), so E (log pi_new/pi_old)^2 = eps^2 Var(d) + O(eps^3) = 2 KL_step + O(eps^3):
    the spread that the clip sees on the next minibatch is s ~ sqrt(2 kl/step).
    Residual: the eps^2 coefficient of E_pi (log pi_eps / pi)^2 is Var(d), for a concrete V.
    Source: MiniRL (arXiv 2512.01374) sec. 2-3; derive_softmax_expansion for KL = eps^2 Var(d)/2.
    """
    sm = Softmax(V)
    d = sp.symbols(f"d1:{V + 1}", real=True)
    eps = sp.Symbol("epsilon", positive=True)
    log_ratio = [eps * dv - sp.log(sum(q * sp.exp(eps * du) for q, du in zip(sm.p, d))) for dv in d]
    second = sm.E([x**2 for x in log_ratio])
    coef2 = sp.diff(second, eps, 2).subs(eps, 0) / 2
    st, mm = sp.Symbol(r"\log\frac{\pi_\theta}{\pi_{old}}"), sp.Symbol(r"\log\frac{\pi_{old}}{\mu}")
    return Derivation(
        name="ratio_decomposition",
        statement=sp.Eq(sp.Symbol(r"\log\frac{\pi_\theta}{\mu}"), st + mm),
        steps=(("spread", sp.Eq(Var(st + mm), Var(st) + Var(mm) + 2 * sp.Function("Cov")(st, mm))),
               ("staleness after one step", sp.Eq(sp.Symbol(r"\mathbb{E}(\log\pi_{new}/\pi_{old})^2"),
                                                  2 * sp.Symbol(r"\mathrm{KL}_{step}") + sp.O(eps**3)))),
        result={"ratio/log_std": sp.sqrt(2 * sp.Symbol("kl_step", nonnegative=True))},
        residuals={"E(log pi_new/pi_old)^2: eps^2 coefficient = Var(d)": sm.on_simplex(coef2 - sm.var(d))},
        source="MiniRL (arXiv 2512.01374) sec. 2-3",
        symbols={"kl_step": sp.Symbol("kl_step", nonnegative=True)},
    )


@cache
def derive_clip_frac() -> Derivation:
    """Fraction of tokens whose PPO clip is active, for Gaussian log-ratios X ~ N(m, s^2).

    The clip stops a token's gradient when A > 0 and r > 1 + eps_high, or A < 0 and r < 1 - eps_low
    (the region where min(rA, clip(r)A) takes the clipped branch), so with f+ / f- the fractions of
    tokens with A > 0 / A < 0 (independent of X in this model):
      ratio/clip_frac = f+ (1 - Phi((log(1 + eps_high) - m)/s)) + f- Phi((log(1 - eps_low) - m)/s)
    Residual: the tails by sympy integration of the Gaussian density.
    Source: Schulman et al. 2017, PPO, eq. 7; DAPO (Yu et al. 2025) sec. 3.1 for eps_low != eps_high.
    """
    el, eh = sp.symbols("eps_low eps_high", positive=True)
    fp, fn = sp.symbols("f_pos f_neg", nonnegative=True)
    high, low = fp * (1 - Phi((sp.log(1 + eh) - m) / s)), fn * Phi((sp.log(1 - el) - m) / s)
    closed = high + low
    integrated = fp * _tail(sp.log(1 + eh)) + fn * (1 - _tail(sp.log(1 - el)))
    return Derivation(
        name="clip_frac",
        statement=sp.Eq(sp.Symbol("clip_frac"), fp * sp.Symbol(r"P(r > 1+\epsilon_h)") + fn * sp.Symbol(r"P(r < 1-\epsilon_l)")),
        steps=(("Gaussian log-ratio", sp.Eq(sp.Symbol("X"), sp.Symbol(r"\mathcal{N}(m, s^2)"))),),
        result={"ratio/clip_frac": closed, "ratio/clip_frac_high": high, "ratio/clip_frac_low": low},
        residuals={"closed form = integral": (integrated - closed).subs(
            {el: 1 - sp.exp(sp.Symbol("log_1m_eps_low", real=True)), eh: sp.exp(sp.Symbol("log_1p_eps_high", real=True)) - 1})},
        source="Schulman et al. 2017 eq. 7; Yu et al. 2025 sec. 3.1",
        symbols={"eps_low": el, "eps_high": eh, "f_pos": fp, "f_neg": fn, **GAUSS},
    )


@cache
def derive_tis() -> Derivation:
    """Truncated IS, w = min(rho, C), rho = e^X lognormal: touched fraction, weight mean, bias.

      correction/touched_frac = P(rho > C) = 1 - Phi((log C - m)/s)
      correction/weight_mean  = E w = e^{m + s^2/2} - E(rho - C)_+,
      E(rho - C)_+ = e^{m + s^2/2} Phi((m + s^2 - log C)/s) - C Phi((m - log C)/s)    (Black-Scholes form)
    Bias of the corrected gradient of any f: E_mu[w f] - E_pi[f] = -E_mu[(rho - C)_+ f] (never positive
    for f >= 0: truncation only removes weight). Residuals: both closed forms against sympy integrals.
    Source: Yao et al. 2025 (TIS blog); Espeholt et al. 2018, IMPALA, eq. 1 (truncated rho-bar).
    """
    C = sp.Symbol("C", positive=True)
    touched = 1 - Phi((sp.log(C) - m) / s)
    excess = sp.exp(m + s**2 / 2) * Phi((m + s**2 - sp.log(C)) / s) - C * Phi((m - sp.log(C)) / s)
    mean_w = sp.exp(m + s**2 / 2) - excess
    return Derivation(
        name="tis",
        statement=sp.Eq(sp.Symbol(r"\mathbb{E}_\mu[w f] - \mathbb{E}_\pi[f]"), -sp.Symbol(r"\mathbb{E}_\mu[(\rho - C)_+ f]")),
        steps=(("weight", sp.Eq(sp.Symbol("w"), sp.Min(sp.Symbol(r"\rho"), C))),
               ("truncated excess", sp.Eq(sp.Symbol(r"\mathbb{E}(\rho - C)_+"), excess))),
        result={"correction/touched_frac": touched, "correction/weight_mean": mean_w},
        residuals={k: v.subs(_log_thresholds("C")) for k, v in {
            "touched = P(X > log C)": _tail(sp.log(C)) - touched,
            "E(rho - C)_+ = integral": _ratio_tail_mean(sp.log(C)) - C * _tail(sp.log(C)) - excess,
        }.items()},
        source="Yao et al. 2025; Espeholt et al. 2018 eq. 1",
        symbols={"C": C, **GAUSS},
    )


@cache
def derive_icepop() -> Derivation:
    """IcePop, w = rho 1[alpha <= rho <= beta], rho = e^X lognormal: touched fraction, weight mean, bias.

      correction/touched_frac = Phi((log alpha - m)/s) + 1 - Phi((log beta - m)/s)
      correction/weight_mean  = e^{m + s^2/2} [Phi((log beta - m - s^2)/s) - Phi((log alpha - m - s^2)/s)]
    Bias: E_mu[w f] - E_pi[f] = -E_mu[rho 1(rho outside [alpha, beta]) f] (dropped, not truncated: a
    dropped token loses all its weight, where TIS keeps C of it). Residuals: sympy integrals.
    Source: Ling Team 2025, Ring-1T (arXiv 2510.18855), "IcePop" (masking function M(k)).
    """
    al, be = sp.symbols("alpha beta", positive=True)
    touched = Phi((sp.log(al) - m) / s) + 1 - Phi((sp.log(be) - m) / s)
    mean_w = sp.exp(m + s**2 / 2) * (Phi((sp.log(be) - m - s**2) / s) - Phi((sp.log(al) - m - s**2) / s))
    return Derivation(
        name="icepop",
        statement=sp.Eq(sp.Symbol(r"\mathbb{E}_\mu[w f] - \mathbb{E}_\pi[f]"),
                        -sp.Symbol(r"\mathbb{E}_\mu[\rho 1(\rho\notin[\alpha,\beta]) f]")),
        steps=(("weight", sp.Eq(sp.Symbol("w"), sp.Symbol(r"\rho") * sp.Symbol(r"1[\alpha\le\rho\le\beta]"))),),
        result={"correction/touched_frac": touched, "correction/weight_mean": mean_w},
        residuals={k: v.subs(_log_thresholds("alpha", "beta")) for k, v in {
            "touched = P(X < log alpha) + P(X > log beta)": 1 - _tail(sp.log(al)) + _tail(sp.log(be)) - touched,
            "E w = integral": _ratio_tail_mean(sp.log(al)) - _ratio_tail_mean(sp.log(be)) - mean_w,
        }.items()},
        source="Ling Team 2025 (arXiv 2510.18855), IcePop",
        symbols={"alpha": al, "beta": be, **GAUSS},
    )


# ----------------------------------------------------------------------------------------------
# The corrections of issue 19: two-sided TIS (token level) and the sequence-level ones. A sequence-level
# correction touches every token of a row or none, so its touched fraction is token-weighted over rows:
#   touched_frac = sum_b L_b P_b / sum_b L_b,   L_b = the row's loss tokens, P_b = P(row b touched).
# With independent per-token log-ratios X_t ~ N(m, s^2), a row of L tokens has
#   sum_t X_t ~ N(L m, L s^2)   and   mean_t X_t ~ N(m, s^2 / L)
# (the residuals check both through the moment generating function). Tokens of one sequence that share a
# policy lag are correlated in practice, which widens the row's spread beyond s^2 / L: an observed
# touched fraction above the prediction is what that correlation looks like.

_t = sp.Symbol("t", real=True)  # the MGF's argument
_L = sp.Symbol("L", integer=True, positive=True)  # a row's number of loss tokens


def _gauss_mgf(mean: sp.Expr, var: sp.Expr) -> sp.Expr:
    """E e^{tY}, Y ~ N(mean, var)."""
    return sp.exp(mean * _t + var * _t**2 / 2)


def _row_tail(a: sp.Expr, mean: sp.Expr, std: sp.Expr) -> sp.Expr:
    """P(Y > a), Y ~ N(mean, std^2), from the sympy integral of _tail with (m, s) -> (mean, std)."""
    return _tail(a).subs({m: mean, s: std}, simultaneous=True)


@cache
def derive_tis_two_sided() -> Derivation:
    """Two-sided TIS, w = clamp(rho, l, C), rho = e^X lognormal: touched fraction and weight mean.

      correction/touched_frac = P(rho < l) + P(rho > C) = Phi((log l - m)/s) + 1 - Phi((log C - m)/s)
      correction/weight_mean  = l Phi((log l - m)/s) + C (1 - Phi((log C - m)/s))
                                + e^{m + s^2/2} [Phi((log C - m - s^2)/s) - Phi((log l - m - s^2)/s)]
    A token is touched when its weight differs from rho: raised to the floor l or cut to the cap C
    (trainer.algos.touched). l = 0 is tis. Residuals: both closed forms against sympy integrals.
    Source: TRL 1.16 GRPOTrainer, vllm_importance_sampling_mode="token_truncate" (clip_min, clip_max);
    Yao et al. 2025 (TIS blog).
    """
    C, lo = sp.Symbol("C", positive=True), sp.Symbol("low", positive=True)
    below, above = Phi((sp.log(lo) - m) / s), 1 - Phi((sp.log(C) - m) / s)
    inner = sp.exp(m + s**2 / 2) * (Phi((sp.log(C) - m - s**2) / s) - Phi((sp.log(lo) - m - s**2) / s))
    touched, mean_w = below + above, lo * below + C * above + inner
    return Derivation(
        name="tis_two_sided",
        statement=sp.Eq(sp.Symbol("w"), sp.Max(lo, sp.Min(sp.Symbol(r"\rho"), C))),
        steps=(("Gaussian log-ratio", sp.Eq(sp.Symbol("X"), sp.Symbol(r"\mathcal{N}(m, s^2)"))),
               ("touched", sp.Eq(sp.Symbol(r"P(\rho < l) + P(\rho > C)"), touched))),
        result={"correction/touched_frac": touched, "correction/weight_mean": mean_w},
        residuals={k: v.subs(_log_thresholds("C", "low")) for k, v in {
            "touched = P(X < log l) + P(X > log C)": 1 - _tail(sp.log(lo)) + _tail(sp.log(C)) - touched,
            "E w = integral": lo * (1 - _tail(sp.log(lo))) + C * _tail(sp.log(C))
                              + _ratio_tail_mean(sp.log(lo)) - _ratio_tail_mean(sp.log(C)) - mean_w,
        }.items()},
        source="TRL 1.16 GRPOTrainer (token_truncate); Yao et al. 2025",
        symbols={"C": C, "low": lo, **GAUSS},
    )


@cache
def derive_seq_tis() -> Derivation:
    """Sequence-level TIS, w_b = min(prod_t rho_t, C) (mode "mask": 0 above C): a row is touched when its
    log-weight S_L = sum_t X_t exceeds log C.

      P(row of L tokens touched) = P(S_L > log C) = 1 - Phi((log C - L m) / (sqrt(L) s)),  S_L ~ N(L m, L s^2)
    for independent X_t ~ N(m, s^2); correction/touched_frac is its token-weighted mean over rows (the
    predictor uses each row's own L). Truncate and mask touch the same rows. Residuals: the MGF of S_L is
    the L-th power of X's, and the closed form equals the sympy integral of S_L's density.
    Source: Yao et al. 2025 (TIS, sequence form); verl rollout_is="sequence"; TRL 1.16 "sequence_truncate".
    """
    C = sp.Symbol("C", positive=True)
    row = 1 - Phi((sp.log(C) - _L * m) / (sp.sqrt(_L) * s))
    return Derivation(
        name="seq_tis",
        statement=sp.Eq(sp.Symbol("w_b"), sp.Min(sp.Symbol(r"\prod_t \rho_t"), C)),
        steps=(("row log-weight", sp.Eq(sp.Symbol("S_L"), sp.Symbol(r"\mathcal{N}(L m, L s^2)"))),),
        result={"correction/touched_frac": row},
        residuals={
            "MGF of S_L = (MGF of X)^L": _gauss_mgf(m, s**2) ** _L - _gauss_mgf(_L * m, _L * s**2),
            "P(S_L > log C) = integral": (_row_tail(sp.log(C), _L * m, sp.sqrt(_L) * s) - row).subs(_log_thresholds("C")),
        },
        source="Yao et al. 2025; verl rollout_corr_helper; TRL 1.16 GRPOTrainer",
        symbols={"C": C, "L": _L, **GAUSS},
    )


def _seq_reject(name: str, weight: sp.Expr, source: str) -> Derivation:
    """The geometric-mean rejection shared by masked_seq_is and geo_rs: a row is rejected (every token
    touched) when its mean log-ratio G_L ~ N(m, s^2 / L) leaves [log lo, log hi]."""
    lo, hi = sp.symbols("seq_low seq_high", positive=True)
    sd = s / sp.sqrt(_L)
    row = Phi((sp.log(lo) - m) / sd) + 1 - Phi((sp.log(hi) - m) / sd)
    return Derivation(
        name=name,
        statement=sp.Eq(sp.Symbol(r"w_{b,t}"), weight),
        steps=(("row mean log-ratio", sp.Eq(sp.Symbol("G_L"), sp.Symbol(r"\mathcal{N}(m, s^2 / L)"))),
               ("rejected", sp.Eq(sp.Symbol(r"P(e^{G_L} \notin [lo, hi])"), row))),
        result={"correction/touched_frac": row},
        residuals={
            "MGF of G_L = (MGF of X / L)^L": _gauss_mgf(m / _L, s**2 / _L**2) ** _L - _gauss_mgf(m, s**2 / _L),
            "P(G_L outside) = integral": (1 - _row_tail(sp.log(lo), m, sd) + _row_tail(sp.log(hi), m, sd) - row).subs(
                _log_thresholds("seq_low", "seq_high")),
        },
        source=source,
        symbols={"seq_low": lo, "seq_high": hi, "L": _L, **GAUSS},
    )


@cache
def derive_masked_seq_is() -> Derivation:
    """masked_seq_is, w_{b,t} = rho_t 1[seq_low <= e^{G_b} <= seq_high], G_b the row's mean log-ratio.

      P(row of L tokens touched) = Phi((log lo - m) sqrt(L)/s) + 1 - Phi((log hi - m) sqrt(L)/s)
    G_L ~ N(m, s^2/L) for independent X_t ~ N(m, s^2); correction/touched_frac is its token-weighted mean
    over rows. Bounds on the ratio (convention "ratio"; "verl_k1" mirrors them to [1/hi, 1/lo], which the
    recorder's seq_low / seq_high scalars already hold). Residuals: MGF of the mean and the tail integral.
    Source: verl rollout_corr_helper (rollout_rs="geometric" / "seq_mean_k1"); Liu, Li et al. 2025,
    "When Speed Kills Stability".
    """
    return _seq_reject("masked_seq_is", sp.Symbol(r"\rho_t 1[lo \le e^{G_b} \le hi]"),
                       "verl rollout_corr_helper; Liu, Li et al. 2025 (geometric RS)")


@cache
def derive_geo_rs() -> Derivation:
    """Geo-RS, w_{b,t} = 1[seq_low <= e^{G_b} <= seq_high] (rejection, no IS): the same rows as masked_seq_is.

      P(row of L tokens touched) = Phi((log lo - m) sqrt(L)/s) + 1 - Phi((log hi - m) sqrt(L)/s)
    (a kept token's weight is 1, its untouched value, so touched = rejected). Residuals as masked_seq_is.
    Source: Liu, Li et al. 2025, "When Speed Kills Stability" (geometric-mean rejection sampling).
    """
    return _seq_reject("geo_rs", sp.Symbol(r"1[lo \le e^{G_b} \le hi]"), "Liu, Li et al. 2025 (geometric RS)")

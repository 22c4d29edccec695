"""Predictors: per-step batch statistics in (docs/contracts.md), predicted metric values out.

Each predictor `fn(stats) -> dict[metric name, float]` is registered under the name of the
derivation it was compiled from: predictor `X` <- `derive_X` (its `.derivation`) <- notebook section
"X" <- tests `test_X_*`. The recorder writes its outputs as `pred/X/<metric>`.
Token-level formulas are evaluated per token in float64 and averaged over the N tokens (the
reduction of `entropy/token_mean` and `kl/step`); the tests hold each against its derivation's result,
lambdified. A key a predictor needs and the stats lack raises MissingStatError (a KeyError) naming it;
a metric that cannot be computed from what is there (an empty batch, no mixed group) is absent, never 0.
One signature, no parameters: the run's settings a formula needs (clip range, caps, lr, group size,
GRPO's epsilon) are 0-d scalars in the stats, written by whoever assembles them from the run's config
(probes.recorder, probes.offpolicy, solidrl transfer; docs/contracts.md names them), so a prediction
follows the run's config and no default is copied here.

Left out: predictions that need more than one step's statistics (trajectories are probe-check's).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

from solidrl.theory.advantages import derive_grpo_gradnorm_ratio
from solidrl.theory.entropy import derive_cov_entropy, derive_tabular_adam, derive_tabular_npg, derive_tabular_sgd
from solidrl.theory.kernel import (ORDERS, derive_jvp, derive_jvp1s, derive_jvp2, derive_jvp3, derive_kernel_crosstalk,
                                   derive_trust_region)
from solidrl.theory.offpolicy import (derive_clip_frac, derive_geo_rs, derive_icepop, derive_masked_seq_is,
                                      derive_seq_tis, derive_tis, derive_tis_two_sided)
from solidrl.theory.registry import Registry

__all__ = ["PREDICTORS", "MissingStatError", "predictor", "need"]

Stats = Mapping[str, Tensor]
PredictorFn = Callable[[Stats], dict[str, float]]
PREDICTORS: Registry[PredictorFn] = Registry("predictor")

class MissingStatError(KeyError):
    """A stats key a predictor needs is absent; ``str()`` is a one-line message naming it."""

    def __str__(self) -> str:
        return str(self.args[0])


def _need(stats: Stats, name: str, *keys: str) -> list[Tensor]:
    """The float64 tensors stats[k] for each key, or MissingStatError naming the first absent one."""
    for k in keys:
        if k not in stats:
            raise MissingStatError(f"predictor {name!r} needs stats key {k!r}, absent from this step's stats")
    return [torch.as_tensor(stats[k]).double() for k in keys]


def predictor(name: str, derivation: Optional[Callable] = None) -> Callable[[PredictorFn], PredictorFn]:
    """Public decorator (docs/plugins.md): register fn(stats) as predictor `name`, compiled from `derivation`.

    The derivation is optional for a plugin's predictor; when given it must be named derive_<name>
    (the built-ins' convention: predictor X <- derive_X) and is kept as fn.derivation.
    """
    if derivation is not None and getattr(derivation, "__name__", None) != f"derive_{name}":
        raise ValueError(f"predictor {name!r} must be compiled from derive_{name}, "
                         f"got {getattr(derivation, '__name__', derivation)!r}")

    def deco(fn: PredictorFn) -> PredictorFn:
        fn.derivation = derivation
        return PREDICTORS.register(name)(fn)

    return deco


def _predictor(name: str, derivation: Callable) -> Callable[[PredictorFn], PredictorFn]:
    """The built-ins' form: a derivation is required."""
    return predictor(name, derivation)


need = _need
"""need(stats, predictor_name, *keys) -> float64 tensors, or MissingStatError naming the absent key (public)."""


def _scalar(stats: Stats, name: str, key: str) -> float:
    """A 0-d run setting from the stats (docs/contracts.md, "Scalars"), or MissingStatError naming it."""
    (x,) = _need(stats, name, key)
    return float(x)


def _mean(x: Tensor) -> float:
    return float(x.mean()) if x.numel() else math.nan


def _present(out: dict[str, float]) -> dict[str, float]:
    """Drop the metrics that were not computable (NaN from an empty reduction)."""
    return {k: v for k, v in out.items() if not math.isnan(v)}


def _token_stats(stats: Stats, name: str) -> tuple[Tensor, ...]:
    """(pi_a, logp, H, coef, lr) of the tabular predictors."""
    logp, H, coef, lr = _need(stats, name, "logp", "entropy", "coef", "lr")
    return logp.exp(), logp, H, coef, lr


def _tabular_sgd_entropy(stats: Stats, name: str) -> Tensor:
    pa, logp, H, c, lr = _token_stats(stats, name)
    s2, s2l = _need(stats, name, "sum_p2", "sum_p2_logp")
    return -lr * c * (pa * (logp + H) - s2l - H * s2)


@_predictor("tabular_sgd", derive_tabular_sgd)
def tabular_sgd(stats: Stats) -> dict[str, float]:
    """One SGD step on per-token tabular logits (kernel = identity), dz_t = lr c_t (e_{a_t} - pi_t).

    entropy/delta   = mean_t -lr c (pi_a (logp + H) - sum_p2_logp - H sum_p2)
    kl/step         = mean_t lr^2 c^2 / 2 (pi_a (1-pi_a)^2 + sum_p3 - pi_a^3 - (pi_a - sum_p2)^2)
                      (only when the stats carry `sum_p3` = sum_v pi_v^3; absent otherwise)
    grad/logit_norm = sqrt(sum_t c^2 (1 - 2 pi_a + sum_p2)): the norm of d loss / d (all tokens' logits)
    stats: logp, entropy, sum_p2, sum_p2_logp, coef [N]; lr scalar; optional sum_p3 [N].
    Derivation: theory.entropy.derive_tabular_sgd (Mei et al. 2020 Lemma 2).
    """
    pa, logp, H, c, lr = _token_stats(stats, "tabular_sgd")
    (s2,) = _need(stats, "tabular_sgd", "sum_p2")
    out = {"entropy/delta": _mean(_tabular_sgd_entropy(stats, "tabular_sgd")),
           "grad/logit_norm": float((c**2 * (1 - 2 * pa + s2)).sum().sqrt()) if c.numel() else math.nan}
    if "sum_p3" in stats:
        (s3,) = _need(stats, "tabular_sgd", "sum_p3")
        out["kl/step"] = _mean(lr**2 * c**2 / 2 * (pa * (1 - pa) ** 2 + s3 - pa**3 - (pa - s2) ** 2))
    return _present(out)


@_predictor("tabular_npg", derive_tabular_npg)
def tabular_npg(stats: Stats) -> dict[str, float]:
    """Natural policy gradient on per-token tabular logits, dz_t = lr c_t e_{a_t} / pi_a.

    entropy/delta = mean_t -lr c (logp + H);   kl/step = mean_t lr^2 c^2 (1 - pi_a) / (2 pi_a)
    stats: logp, entropy, coef [N]; lr. Derivation: theory.entropy.derive_tabular_npg (Kakade 2001;
    Cui et al. 2025 Theorem 2).
    """
    pa, logp, H, c, lr = _token_stats(stats, "tabular_npg")
    return _present({"entropy/delta": _mean(-lr * c * (logp + H)),
                     "kl/step": _mean(lr**2 * c**2 * (1 - pa) / (2 * pa))})


@_predictor("tabular_adam", derive_tabular_adam)
def tabular_adam(stats: Stats) -> dict[str, float]:
    """Adam's first step (a sign step) on per-token tabular logits, dz_t = lr sign(c_t) (2 e_{a_t} - 1).

    entropy/delta = mean_t -2 lr sign(c) pi_a (logp + H);   kl/step = mean_t 2 lr^2 sign(c)^2 pi_a (1 - pi_a)
    Exact for the first step after Adam's state is (re)set, and for every step with beta1 = beta2 = 0.
    stats: logp, entropy, coef [N]; lr. Derivation: theory.entropy.derive_tabular_adam (Kingma & Ba 2015).
    """
    pa, logp, H, c, lr = _token_stats(stats, "tabular_adam")
    sg = torch.sign(c)
    return _present({"entropy/delta": _mean(-2 * lr * sg * pa * (logp + H)),
                     "kl/step": _mean(2 * lr**2 * sg**2 * pa * (1 - pa))})


@_predictor("cov_entropy", derive_cov_entropy)
def cov_entropy(stats: Stats) -> dict[str, float]:
    """Cui et al.'s covariance law, estimated over the batch: dH = -lr Cov_batch(logp, x).

    x = coef (form 0, "npg", Theorem 2) or pi_a * coef (form 1, "pg", Theorem 1, which assumes coefficients
    centred under pi). Cov_batch is the population covariance over the N tokens.
    stats: logp, coef [N]; lr; optional `cov_entropy_form` (0-d, 0 = npg, 1 = pg; absent = 0: the form the
    recorder reports). Derivation: theory.entropy.derive_cov_entropy (Cui et al. 2025, sec. 4).
    """
    logp, c, lr = _need(stats, "cov_entropy", "logp", "coef", "lr")
    form = int(stats["cov_entropy_form"]) if "cov_entropy_form" in stats else 0
    if form not in (0, 1):
        raise ValueError(f"stats cov_entropy_form must be 0 (npg) or 1 (pg), got {form}")
    x = c if form == 0 else logp.exp() * c
    return _present({"entropy/delta": _mean(-lr * (logp - logp.mean()) * (x - x.mean()))})


@_predictor("jvp", derive_jvp)
def jvp(stats: Stats) -> dict[str, float]:
    """Exact first order for a real network: dz_t = J(s_t) dtheta from the JVP probe.

    entropy/delta = -mean_t jvp_cov;   kl/step = mean_t jvp_var / 2
    stats: jvp_cov, jvp_var [N] (theory.kernel.linearized_stats of theory.kernel.jvp_logit_change).
    Derivation: theory.kernel.derive_jvp (Ren & Sutherland, ICLR 2025, eq. 3-5).
    """
    cov, var = _need(stats, "jvp", "jvp_cov", "jvp_var")
    return _present({"entropy/delta": _mean(-cov), "kl/step": _mean(var / 2)})


jvp.orders = ORDERS["jvp"]


def _expanded_logits(stats: Stats, name: str) -> dict[str, float]:
    """The batch means of <name>_dH, <name>_kl, <name>_kl_reverse: the exact softmax functionals on logits
    expanded along the step (theory.kernel.taylor_stats), as entropy/delta, kl/step, kl/step_reverse."""
    dH, kl, kr = _need(stats, name, f"{name}_dH", f"{name}_kl", f"{name}_kl_reverse")
    return _present({"entropy/delta": _mean(dH), "kl/step": _mean(kl), "kl/step_reverse": _mean(kr)})


@_predictor("jvp2", derive_jvp2)
def jvp2(stats: Stats) -> dict[str, float]:
    """Second-order logits with exact softmax functionals: z~ = z + dz1 + dz2/2 from the nested JVP probe.

    entropy/delta = mean_t jvp2_dH;   kl/step = mean_t jvp2_kl;   kl/step_reverse = mean_t jvp2_kl_reverse
    stats: jvp2_dH, jvp2_kl, jvp2_kl_reverse [N] (theory.kernel.expanded_stats of jvp2_logit_change; [M]
    with jvp_index when probes.max_states limits the probe). Exact to O(dtheta^2) in the logits: residual
    O(dtheta^3) for dH and O(dtheta^4) for the KLs (theory.kernel.ORDERS).
    Derivation: theory.kernel.derive_jvp2.
    """
    return _expanded_logits(stats, "jvp2")


jvp2.orders = ORDERS["jvp2"]


@_predictor("jvp3", derive_jvp3)
def jvp3(stats: Stats) -> dict[str, float]:
    """Third-order logits with exact softmax functionals: z~3 = z + dz1 + dz2/2 + dz3/6 (probes.jvp3_every).

    entropy/delta = mean_t jvp3_dH;   kl/step = mean_t jvp3_kl;   kl/step_reverse = mean_t jvp3_kl_reverse
    stats: jvp3_dH, jvp3_kl, jvp3_kl_reverse [N] (theory.kernel.logit_order_stats of jvp_taylor_logits at
    order 3). Residual O(dtheta^4) for dH, O(dtheta^5) for the KLs (theory.kernel.ORDERS).
    Derivation: theory.kernel.derive_jvp3.
    """
    return _expanded_logits(stats, "jvp3")


jvp3.orders = ORDERS["jvp3"]


@_predictor("jvp1s", derive_jvp1s)
def jvp1s(stats: Stats) -> dict[str, float]:
    """First-order logits with exact softmax functionals: z~1 = z + dz1 (free on a jvp2 or jvp3 step).

    entropy/delta = mean_t jvp1s_dH;   kl/step = mean_t jvp1s_kl;   kl/step_reverse = mean_t jvp1s_kl_reverse
    stats: jvp1s_dH, jvp1s_kl, jvp1s_kl_reverse [N] (theory.kernel.logit_order_stats). Not a better
    predictor than jvp2: the first term of the residual decomposition, jvp1s - jvp = the softmax's
    nonlinearity on the first-order logits, jvp2 - jvp1s = the logits' curvature (docs/transfer.md).
    Derivation: theory.kernel.derive_jvp1s.
    """
    return _expanded_logits(stats, "jvp1s")


jvp1s.orders = ORDERS["jvp1s"]


@_predictor("trust_region", derive_trust_region)
def trust_region(stats: Stats) -> dict[str, float]:
    """The KL trust region's target: kl/step = delta (optim.trust_region_kl), absent when it is off (delta = 0).

    stats: trust_region_kl (0-d, the run's optim.trust_region_kl). What the trust region claims, as a
    prediction probe-check can hold kl/step to; its error is jvp2's on the scaled step.
    Derivation: theory.kernel.derive_trust_region (Schulman et al. 2015, eq. 12-14).
    """
    d = _scalar(stats, "trust_region", "trust_region_kl")
    return {"kl/step": d} if d > 0 else {}


@_predictor("kernel_crosstalk", derive_kernel_crosstalk)
def kernel_crosstalk(stats: Stats) -> dict[str, float]:
    """The kernel's cross-talk: entropy/crosstalk = jvp's entropy/delta - tabular_sgd's entropy/delta.

    What the network's shared parameters add to (or take from) the entropy change of the identity kernel.
    Meaningful for an SGD step (tabular_sgd's rule). stats: those of jvp and tabular_sgd; when `jvp_index`
    [M] is present (the JVP ran on M of the N tokens) the tabular prediction is taken on those M tokens.
    Derivation: theory.kernel.derive_kernel_crosstalk (Ren & Sutherland, ICLR 2025, sec. 3).
    """
    (cov,) = _need(stats, "kernel_crosstalk", "jvp_cov")
    tab = _tabular_sgd_entropy(stats, "kernel_crosstalk")
    if "jvp_index" in stats:  # the JVP ran on a subset of the tokens (docs/contracts.md, probes.max_states)
        tab = tab[torch.as_tensor(stats["jvp_index"]).long()]
    return _present({"entropy/crosstalk": _mean(-cov - tab)})


@_predictor("grpo_gradnorm_ratio", derive_grpo_gradnorm_ratio)
def grpo_gradnorm_ratio(stats: Stats) -> dict[str, float]:
    """Predicted ||grad|| of GRPO over that of Dr.GRPO and of RLOO, from one batch's group rewards.

    ratio^2 = sum_{g,i} (A^grpo_{g,i})^2 / sum_{g,i} (A^base_{g,i})^2, A^grpo = (r - mean_g)/(std_g + 1e-6)
    (population std, 1e-6 = stats grpo_std_eps), A^dr = r - mean_g, A^rloo = G_g/(G_g - 1) A^dr. Binary rewards: ratio vs Dr.GRPO =
    sqrt(#mixed groups / sum_g p_g (1 - p_g)). Assumes score vectors uncorrelated across samples
    (see the derivation). Absent when no group has two distinct rewards.
    stats: reward [S], group_index [S] (long); grpo_std_eps (the trainer's epsilon, 1e-6).
    Derivation: theory.advantages.derive_grpo_gradnorm_ratio.
    """
    (r,) = _need(stats, "grpo_gradnorm_ratio", "reward")
    eps = _scalar(stats, "grpo_gradnorm_ratio", "grpo_std_eps")
    (gi,) = _need(stats, "grpo_gradnorm_ratio", "group_index")
    _, g = torch.unique(gi.long(), return_inverse=True)
    n = torch.bincount(g).double()
    mean = torch.zeros_like(n).index_add_(0, g, r) / n
    ss = torch.zeros_like(n).index_add_(0, g, (r - mean[g]) ** 2)  # sum_i (A^dr)^2 per group
    grpo_ss = ss / (torch.sqrt(ss / n) + eps) ** 2
    rloo_ss = torch.where(n > 1, (n / (n - 1).clamp(min=1)) ** 2 * ss, torch.zeros_like(ss))
    if not float(ss.sum()) > 0:
        return {}
    return {"grad/norm_ratio_vs_dr_grpo": float((grpo_ss.sum() / ss.sum()).sqrt()),
            "grad/norm_ratio_vs_rloo": float((grpo_ss.sum() / rloo_ss.sum()).sqrt())}


def _gauss(stats: Stats, name: str) -> tuple[Tensor, Tensor]:
    """(m, s): mean and population std of the per-token log-ratios (the Gaussian model's parameters)."""
    (x,) = _need(stats, name, "log_ratio")
    if not x.numel():
        return torch.tensor(math.nan, dtype=torch.float64), torch.tensor(math.nan, dtype=torch.float64)
    return x.mean(), x.std(correction=0)


def _tail(a: float, m: Tensor, s: Tensor) -> Tensor:
    """P(X > a), X ~ N(m, s^2); for s = 0 the point mass at m."""
    if float(s) == 0:
        return (m > a).double()
    return 1 - torch.special.ndtr((a - m) / s)


def _ratio_tail_mean(a: float, m: Tensor, s: Tensor) -> Tensor:
    """E[e^X 1(X > a)] = e^{m + s^2/2} (1 - Phi((a - m - s^2)/s)), X ~ N(m, s^2)."""
    if float(s) == 0:
        return torch.exp(m) * (m > a).double()
    return torch.exp(m + s**2 / 2) * (1 - torch.special.ndtr((a - m - s**2) / s))


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


@_predictor("clip_frac", derive_clip_frac)
def clip_frac(stats: Stats) -> dict[str, float]:
    """Predicted fraction of tokens whose PPO clip is active, from the spread of the log-ratios.

    ratio/clip_frac = f+ P(r > 1 + eps_high) + f- P(r < 1 - eps) (the two terms: ratio/clip_frac_high and
    ratio/clip_frac_low, as docs/metrics.md defines them), log r ~ N(m, s^2) with m, s the mean and
    std of stats `log_ratio`, f+/f- the fractions of tokens with adv > 0 / adv < 0. Active = the clipped
    branch of min(rA, clip(r)A) is taken (the token's gradient is zeroed). eps = stats eps_low,
    eps_high = stats eps_high (the run's algo.eps_low / eps_high). The ratio modelled is the one whose log `log_ratio` holds
    (pi_train_old / pi_rollout); for staleness, s ~ sqrt(2 kl/step) (derive_ratio_decomposition).
    stats: log_ratio, adv [N]; eps_low, eps_high. Derivation: theory.offpolicy.derive_clip_frac (PPO eq. 7).
    """
    eps, eh = _scalar(stats, "clip_frac", "eps_low"), _scalar(stats, "clip_frac", "eps_high")
    m, s = _gauss(stats, "clip_frac")
    (adv,) = _need(stats, "clip_frac", "adv")
    fp, fn = (adv > 0).double().mean(), (adv < 0).double().mean()
    high, low = fp * _tail(math.log1p(eh), m, s), fn * (1 - _tail(_log(1 - eps), m, s))
    return _present({"ratio/clip_frac": float(high + low), "ratio/clip_frac_high": float(high),
                     "ratio/clip_frac_low": float(low)})


@_predictor("tis", derive_tis)
def tis(stats: Stats) -> dict[str, float]:
    """Truncated IS, w = min(rho, C): predicted touched fraction and mean weight, log rho ~ N(m, s^2).

    correction/touched_frac = P(rho > C);  correction/weight_mean = e^{m + s^2/2} - E(rho - C)_+.
    C = stats tis_cap (the run's offpolicy.tis_cap). stats: log_ratio [N]; tis_cap.
    Derivation: theory.offpolicy.derive_tis (Yao et al. 2025; IMPALA eq. 1).
    """
    C = _scalar(stats, "tis", "tis_cap")
    m, s = _gauss(stats, "tis")
    a = math.log(C)
    excess = _ratio_tail_mean(a, m, s) - C * _tail(a, m, s)
    return _present({"correction/touched_frac": float(_tail(a, m, s)),
                     "correction/weight_mean": float(torch.exp(m + s**2 / 2) - excess)})


@_predictor("icepop", derive_icepop)
def icepop(stats: Stats) -> dict[str, float]:
    """IcePop, w = rho 1[alpha <= rho <= beta]: predicted touched fraction and mean weight, log rho ~ N(m, s^2).

    correction/touched_frac = P(rho < alpha) + P(rho > beta);  correction/weight_mean = E[rho 1[alpha <= rho <= beta]].
    alpha, beta = stats icepop_low, icepop_high (the run's offpolicy.icepop_low / icepop_high).
    stats: log_ratio [N]; icepop_low, icepop_high. Derivation: theory.offpolicy.derive_icepop (Ring-1T, arXiv 2510.18855).
    """
    alpha, beta = _scalar(stats, "icepop", "icepop_low"), _scalar(stats, "icepop", "icepop_high")
    m, s = _gauss(stats, "icepop")
    lo, hi = _log(alpha), _log(beta)
    return _present({"correction/touched_frac": float(1 - _tail(lo, m, s) + _tail(hi, m, s)),
                     "correction/weight_mean": float(_ratio_tail_mean(lo, m, s) - _ratio_tail_mean(hi, m, s))})


@_predictor("tis_two_sided", derive_tis_two_sided)
def tis_two_sided(stats: Stats) -> dict[str, float]:
    """Two-sided TIS, w = clamp(rho, l, C): predicted touched fraction and mean weight, log rho ~ N(m, s^2).

    correction/touched_frac = P(rho < l) + P(rho > C);
    correction/weight_mean = l P(rho < l) + C P(rho > C) + E[rho 1(l <= rho <= C)].
    l, C = stats tis_low, tis_cap (tis_two_sided's `low` parameter and offpolicy.tis_cap).
    stats: log_ratio [N]; tis_low, tis_cap. Derivation: theory.offpolicy.derive_tis_two_sided (TRL 1.16
    token_truncate; Yao et al. 2025).
    """
    C, lo = _scalar(stats, "tis_two_sided", "tis_cap"), _scalar(stats, "tis_two_sided", "tis_low")
    m, s = _gauss(stats, "tis_two_sided")
    a, b = _log(lo), math.log(C)
    below, above = 1 - _tail(a, m, s), _tail(b, m, s)
    inner = _ratio_tail_mean(a, m, s) - _ratio_tail_mean(b, m, s)
    return _present({"correction/touched_frac": float(below + above),
                     "correction/weight_mean": float(lo * below + C * above + inner)})


def _rows(stats: Stats, name: str) -> Tensor:
    """Loss tokens per sequence, L_b [B] (rows with no loss token absent), from stats `seq_index`."""
    (si,) = _need(stats, name, "seq_index")
    return torch.unique(si.long(), return_counts=True)[1].double()


def _token_weighted(L: Tensor, p_row: Tensor) -> float:
    """sum_b L_b P_b / sum_b L_b: the touched fraction over tokens when a row is touched whole."""
    return float((L * p_row).sum() / L.sum()) if L.numel() else math.nan


def _seq_reject_frac(stats: Stats, name: str) -> dict[str, float]:
    lo, hi = _scalar(stats, name, "seq_low"), _scalar(stats, name, "seq_high")
    m, s = _gauss(stats, name)
    L = _rows(stats, name)
    if not L.numel() or math.isnan(float(m)):
        return {}
    sd = s / L.sqrt()
    if float(s) == 0:
        p = ((m < _log(lo)) | (m > _log(hi))).double().expand_as(L)
    else:
        p = torch.special.ndtr((_log(lo) - m) / sd) + 1 - torch.special.ndtr((_log(hi) - m) / sd)
    return _present({"correction/touched_frac": _token_weighted(L, p)})


@_predictor("seq_tis", derive_seq_tis)
def seq_tis(stats: Stats) -> dict[str, float]:
    """Sequence-level TIS: predicted fraction of tokens in rows whose product ratio exceeds C.

    correction/touched_frac = sum_b L_b P(N(L_b m, L_b s^2) > log C) / sum_b L_b, m, s the mean and std
    of the per-token log-ratios, L_b the row's loss tokens (counted from seq_index), tokens independent.
    C = stats tis_cap. stats: log_ratio, seq_index [N]; tis_cap.
    Derivation: theory.offpolicy.derive_seq_tis (Yao et al. 2025; verl rollout_is="sequence").
    """
    C = _scalar(stats, "seq_tis", "tis_cap")
    m, s = _gauss(stats, "seq_tis")
    L = _rows(stats, "seq_tis")
    if not L.numel() or math.isnan(float(m)):
        return {}
    if float(s) == 0:
        p = (L * m > math.log(C)).double()
    else:
        p = 1 - torch.special.ndtr((math.log(C) - L * m) / (L.sqrt() * s))
    return _present({"correction/touched_frac": _token_weighted(L, p)})


@_predictor("masked_seq_is", derive_masked_seq_is)
def masked_seq_is(stats: Stats) -> dict[str, float]:
    """masked_seq_is: predicted fraction of tokens in rows rejected on their geometric-mean ratio.

    correction/touched_frac = sum_b L_b P(e^{G_b} outside [lo, hi]) / sum_b L_b, G_b ~ N(m, s^2 / L_b),
    tokens independent, L_b from seq_index. lo, hi = stats seq_low, seq_high: bounds on the ratio (the
    recorder writes the mirrored ones for convention "verl_k1"). stats: log_ratio, seq_index [N]; seq_low,
    seq_high. Derivation: theory.offpolicy.derive_masked_seq_is (verl geometric RS; Liu, Li et al. 2025).
    """
    return _seq_reject_frac(stats, "masked_seq_is")


@_predictor("geo_rs", derive_geo_rs)
def geo_rs(stats: Stats) -> dict[str, float]:
    """Geo-RS: the rows masked_seq_is rejects, so the same touched fraction (a kept token's weight is 1).

    correction/touched_frac = sum_b L_b P(e^{G_b} outside [lo, hi]) / sum_b L_b, G_b ~ N(m, s^2 / L_b).
    stats: log_ratio, seq_index [N]; seq_low, seq_high.
    Derivation: theory.offpolicy.derive_geo_rs (Liu, Li et al. 2025, geometric-mean rejection sampling).
    """
    return _seq_reject_frac(stats, "geo_rs")

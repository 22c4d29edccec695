"""Entropy dynamics (theory.entropy): symbolic checks, predictors vs their derivations, and actual steps.

The η² tests take a real optimizer step on a tabular softmax bandit (one row of logits per token, the
setting where the tabular predictors are exact to first order) and hold the measured entropy change
against the predictor: the residual is second order, so halving η divides it by about 4.
"""
import numpy as np
import pytest
import torch

from solidrl.theory import entropy
from solidrl.theory.derivation import STAT
from solidrl.theory.predictors import PREDICTORS

# float64 as torch's default inside this module's tests only (conftest.float64_default): set at import, it
# leaked into every other test of the session and changed the trainer's numbers there
pytestmark = pytest.mark.usefixtures("float64_default")


def H(z):
    """Exact entropy of softmax(z) per row, computed here from scratch (float64)."""
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * logp).sum(-1)


def KL(z0, z1):
    """Exact KL(softmax(z0) || softmax(z1)) per row."""
    l0, l1 = torch.log_softmax(z0, -1), torch.log_softmax(z1, -1)
    return (l0.exp() * (l0 - l1)).sum(-1)


def bandit(seed, N=8, V=10, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(N, V, generator=g)
    a = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(-1)
    c = torch.randn(N, generator=g)
    return z, a, c


def stats_of(z, a, c, lr):
    return {**entropy.token_stats(z, a), "coef": c, "lr": torch.tensor(lr)}


def optimizer_step(z, a, c, lr, opt_cls):
    """One real step of opt_cls on loss = -sum_t c_t log pi(a_t) over per-token logits; returns new logits."""
    w = torch.nn.Parameter(z.clone())
    opt = opt_cls([w], lr=lr)
    loss = -(c * torch.log_softmax(w, -1).gather(-1, a[:, None]).squeeze(-1)).sum()
    loss.backward()
    opt.step()
    return w.detach()


def npg_step(z, a, c, lr):
    """Natural gradient step dz_t = lr F_t^+ g_t, F_t = diag(pi) - pi pi^T, g_t = c_t (e_a - pi) (pinv, not the formula)."""
    p = torch.softmax(z, -1)
    g = c[:, None] * (torch.nn.functional.one_hot(a, z.shape[-1]) - p)
    F = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return z + lr * (torch.linalg.pinv(F, hermitian=True) @ g[:, :, None]).squeeze(-1)


def residual_ratio(name, step, seed, lr, metric="entropy/delta"):
    """|measured - predicted| at lr over the same at lr/2, for predictor `name` and step rule `step`.

    lr: a number, or a function of (z, a, c) for rules whose step size depends on the token.
    """
    z, a, c = bandit(seed)
    lr = lr(z, a, c) if callable(lr) else lr
    res = []
    for eta in (lr, lr / 2):
        z1 = step(z, a, c, eta)
        measured = (H(z1) - H(z)).mean() if metric == "entropy/delta" else KL(z, z1).mean()
        res.append(abs(float(measured) - PREDICTORS.get(name)(stats_of(z, a, c, eta))[metric]))
    return res[0] / res[1], res


# ---- softmax_expansion -------------------------------------------------------------------------


@pytest.mark.parametrize("V", [2, 3, 4])
def test_softmax_expansion_symbolic_for_concrete_vocab(V):
    assert all(entropy.derive_softmax_expansion(V).verify().values())


def test_softmax_expansion_lambdified_matches_directional_moments():
    d = entropy.derive_softmax_expansion(3)
    sym = [d.symbols[k] for k in ("epsilon", "p1", "p2", "p3", "d1", "d2", "d3")]
    rng = np.random.default_rng(0)
    for _ in range(20):
        z, dv, eps = rng.normal(size=3) * 2, rng.normal(size=3), rng.uniform(0.01, 1)
        p = np.exp(z) / np.exp(z).sum()
        m = entropy.directional_moments(torch.tensor(z), torch.tensor(dv))
        num_h = -eps * m["cov"] - eps**2 / 2 * (m["var"] + m["cov2"])
        np.testing.assert_allclose(d.lambdify("entropy/delta", sym)(eps, *p, *dv), float(num_h), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(d.lambdify("kl/step", sym)(eps, *p, *dv), float(eps**2 / 2 * m["var"]), rtol=1e-10)


def test_softmax_expansion_large_vocab_residual_orders():
    """V = 50000: first-order dH residual ~ eps^2, second-order ~ eps^3, KL - eps^2 Var/2 ~ eps^3."""
    g = torch.Generator().manual_seed(1)
    z, d = 3 * torch.randn(50000, generator=g), torch.randn(50000, generator=g)
    m = entropy.directional_moments(z, d)
    rows = []
    for eps in (0.04, 0.02):
        dH, kl = float(H(z + eps * d) - H(z)), float(KL(z, z + eps * d))
        first = -eps * m["cov"]
        rows.append((abs(dH - first), abs(dH - first + eps**2 / 2 * (m["var"] + m["cov2"])),
                     abs(kl - eps**2 / 2 * m["var"])))
    r1, r2, rk = (float(a / b) for a, b in zip(*rows))
    assert 3.5 < r1 < 4.5, r1  # residual of the first-order term ~ eps^2
    assert 6.5 < r2 < 9.5, r2  # of the second-order expansion ~ eps^3
    assert 6.5 < rk < 9.5, rk  # of KL = eps^2 Var/2 ~ eps^3


# ---- tabular_sgd / tabular_npg / tabular_adam ----------------------------------------------------

TOKEN_ARGS = [STAT[k] for k in ("logp", "entropy", "sum_p2", "sum_p2_logp", "sum_p3", "coef", "lr")]


def _lambdified_mean(name, metric, st):
    f = getattr(entropy, f"derive_{name}")().lambdify(metric, TOKEN_ARGS)
    vals = f(*(st[k].numpy() if st[k].dim() else float(st[k]) for k in
               ("logp", "entropy", "sum_p2", "sum_p2_logp", "sum_p3", "coef", "lr")))
    return float(np.mean(vals * np.ones(len(st["logp"]))))


TABULAR_CLAIMS = {"tabular_sgd": "grad/logit_norm", "tabular_npg": "F e_a / pi_a = e_a - pi",
                  "tabular_adam": "step 1 -> -eta sign(g)"}
"""Each tabular derivation's own claim beside its two results."""


@pytest.mark.parametrize("name", ["tabular_sgd", "tabular_npg", "tabular_adam"])
def test_tabular_symbolic(name):
    """Every claim has a residual and each simplifies to 0 (no residuals at all must not pass)."""
    checks = getattr(entropy, f"derive_{name}")().verify()
    assert set(checks) == {"entropy/delta", "kl/step", TABULAR_CLAIMS[name]}
    assert all(checks.values()), checks


@pytest.mark.parametrize("name", ["tabular_sgd", "tabular_npg", "tabular_adam"])
@pytest.mark.parametrize("seed", range(5))
def test_tabular_predictor_equals_lambdified_derivation(name, seed):
    z, a, c = bandit(seed, N=16, V=7, scale=3)
    c[0] = 0.0  # a zero coefficient (sign(0) = 0 for Adam)
    st = stats_of(z, a, c, 0.3)
    out = PREDICTORS.get(name)(st)
    for metric in ("entropy/delta", "kl/step"):
        np.testing.assert_allclose(out[metric], _lambdified_mean(name, metric, st), rtol=1e-10, atol=1e-14)


def test_tabular_sgd_residual_shrinks_as_lr_squared():
    for seed in range(3):
        ratio, res = residual_ratio("tabular_sgd", lambda z, a, c, lr: optimizer_step(z, a, c, lr, torch.optim.SGD), seed, 0.1)
        assert 3.0 < ratio < 5.0, (seed, ratio, res)


def test_tabular_sgd_kl_residual_is_third_order():
    ratio, res = residual_ratio("tabular_sgd", lambda z, a, c, lr: optimizer_step(z, a, c, lr, torch.optim.SGD), 0, 0.1,
                                metric="kl/step")
    assert 6.0 < ratio < 10.0, (ratio, res)


def test_tabular_sgd_logit_norm_equals_autograd():
    z, a, c = bandit(3)
    w = z.clone().requires_grad_()
    (-(c * torch.log_softmax(w, -1).gather(-1, a[:, None]).squeeze(-1)).sum()).backward()
    pred = PREDICTORS.get("tabular_sgd")(stats_of(z, a, c, 0.1))["grad/logit_norm"]
    assert pred == pytest.approx(float(w.grad.norm()), rel=1e-12)


def test_tabular_sgd_kl_is_absent_without_sum_p3():
    z, a, c = bandit(0)
    st = stats_of(z, a, c, 0.1)
    del st["sum_p3"]
    assert set(PREDICTORS.get("tabular_sgd")(st)) == {"entropy/delta", "grad/logit_norm"}


def test_tabular_npg_residual_shrinks_as_lr_squared():
    """The natural step is lr c / pi_a on the sampled logit: lr is set so the largest step is 0.1."""
    def lr(z, a, c):
        return 0.1 / float((c / torch.softmax(z, -1).gather(-1, a[:, None]).squeeze(-1)).abs().max())

    for seed in range(3):
        ratio, res = residual_ratio("tabular_npg", npg_step, seed, lr)
        assert 3.0 < ratio < 5.0, (seed, ratio, res)


def test_tabular_adam_residual_shrinks_as_lr_squared():
    """A real torch.optim.Adam first step (m = g, v = g^2 after bias correction) is a sign step."""
    for seed in range(3):
        ratio, res = residual_ratio("tabular_adam", lambda z, a, c, lr: optimizer_step(z, a, c, lr, torch.optim.Adam), seed, 0.05)
        assert 3.0 < ratio < 5.0, (seed, ratio, res)


# ---- cov_entropy -----------------------------------------------------------------------------------


def test_cov_entropy_symbolic():
    assert all(entropy.derive_cov_entropy().verify().values())


@pytest.mark.parametrize("form", ["npg", "pg"])
def test_cov_entropy_predictor_equals_lambdified_derivation(form):
    d = entropy.derive_cov_entropy(N=4)
    f = d.lambdify("entropy/delta", [STAT["lr"], *(d.symbols[f"logp_{i}"] for i in range(1, 5)),
                                     *(d.symbols[f"coef_{i}"] for i in range(1, 5))])
    rng = np.random.default_rng(1)
    logp, c = -rng.exponential(size=4), rng.normal(size=4)
    x = c if form == "npg" else np.exp(logp) * c
    out = PREDICTORS.get("cov_entropy")({"logp": torch.tensor(logp), "coef": torch.tensor(c), "lr": torch.tensor(0.3),
                                         "cov_entropy_form": torch.tensor(0 if form == "npg" else 1)})
    assert out["entropy/delta"] == pytest.approx(f(0.3, *logp, *x), rel=1e-12)


def test_cov_entropy_estimates_expected_npg_step_by_monte_carlo():
    """One state, many sampled tokens with c = A(a): the batch covariance -> -lr Cov_pi(log pi, A) (exact)."""
    g = torch.Generator().manual_seed(4)
    z, A, lr, N = 2 * torch.randn(6, generator=g), torch.randn(6, generator=g), 0.1, 200_000
    p, logpi = torch.softmax(z, -1), torch.log_softmax(z, -1)
    exact = -lr * float((p * (logpi - (p * logpi).sum()) * (A - (p * A).sum())).sum())
    a = torch.multinomial(p, N, replacement=True, generator=g)
    pred = PREDICTORS.get("cov_entropy")({"logp": logpi[a], "coef": A[a], "lr": torch.tensor(lr)})["entropy/delta"]
    # MC std of a sample covariance ~ sqrt(Var((l - El)(A - EA)) / N) * lr; allow 5 of them
    sd = lr * float(((logpi[a] - logpi[a].mean()) * (A[a] - A[a].mean())).std()) / N**0.5
    assert abs(pred - exact) < 5 * sd, (pred, exact, sd)

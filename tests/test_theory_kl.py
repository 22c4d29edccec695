"""KL estimators (theory.kl): symbolic bias/variance/gradient claims, and the gradient claims again by autograd.

The estimator properties of the trainer's k1/k2/k3 functions are in test_trainer_algos_properties.py.
"""
import numpy as np
import pytest
import torch

from solidrl.theory import kl

# float64 as torch's default inside this module's tests only (conftest.float64_default): set at import, it
# leaked into every other test of the session and changed the trainer's numbers there
pytestmark = pytest.mark.usefixtures("float64_default")


def test_kl_estimators_symbolic():
    assert all(kl.derive_kl_estimators(3).verify().values())


def test_kl_estimators_bias_and_variance_orders_numerically():
    """V = 1000, ref one logit step away: KL ~ eps^2, bias(k2) ~ eps^3, Var(k1) ~ eps^2, Var(k3) ~ eps^4."""
    g = torch.Generator().manual_seed(0)
    # a skewed direction, so that bias(k2)'s eps^3 term (-E dc^3 / 6) is not small against eps^4
    z, d = 2 * torch.randn(1000, generator=g), torch.randn(1000, generator=g).exp()
    rows = []
    for eps in (0.004, 0.002):
        lp, lr = torch.log_softmax(z, -1), torch.log_softmax(z + eps * d, -1)
        p, x = lp.exp(), lr - lp  # x = log rho
        k = {"k1": -x, "k2": x**2 / 2, "k3": torch.expm1(x) - x}
        KL = (p * -x).sum()
        E = {n: (p * v).sum() for n, v in k.items()}
        Var = {n: (p * (v - E[n]) ** 2).sum() for n, v in k.items()}
        rows.append([KL, abs(E["k2"] - KL), Var["k1"], Var["k3"], abs(E["k1"] - KL), abs(E["k3"] - KL)])
    ratios = [float(a / b) for a, b in zip(rows[0][:4], rows[1][:4])]
    assert ratios[0] == pytest.approx(4, rel=0.05)  # KL ~ eps^2
    assert ratios[1] == pytest.approx(8, rel=0.1)  # bias(k2) ~ eps^3
    assert ratios[2] == pytest.approx(4, rel=0.05)  # Var(k1) ~ eps^2
    assert ratios[3] == pytest.approx(16, rel=0.1)  # Var(k3) ~ eps^4
    assert max(float(v) for v in rows[0][4:]) < 1e-15  # k1, k3 unbiased (exactly, up to rounding)


def test_kl_gradients_symbolic():
    assert all(kl.derive_kl_gradients(3).verify().values())


def _grads(seed, V=6):
    """Autograd versions of every claim of derive_kl_gradients, on random logits (shares no code with it)."""
    g = torch.Generator().manual_seed(seed)
    z = (2 * torch.randn(V, generator=g)).requires_grad_()
    lref, lmu = torch.log_softmax(2 * torch.randn(V, generator=g), -1), torch.log_softmax(torch.randn(V, generator=g), -1)

    def grad(f):
        (gz,) = torch.autograd.grad(f(torch.log_softmax(z, -1)), z)
        return gz

    def k(name, lp):  # per-token estimates at every x, as functions of log pi
        x = lref - lp
        return {"k1": -x, "k2": x**2 / 2, "k3": torch.expm1(x) - x}[name]

    p = torch.softmax(z, -1).detach()
    out = {}
    for n in ("k1", "k2", "k3"):
        out[f"loss {n}"] = grad(lambda lp: (p * k(n, lp)).sum())  # x ~ sg(pi), gradient through log pi(x)
        out[f"reward {n}"] = grad(lambda lp: (p * k(n, lp).detach() * lp).sum())  # score function
        out[f"off {n}"] = grad(lambda lp: (lmu.exp() * k(n, lp)).sum())
        out[f"off-IS {n}"] = grad(lambda lp: (lmu.exp() * (p / lmu.exp()) * k(n, lp)).sum())
    out["KL(pi||ref)"] = grad(lambda lp: (lp.exp() * (lp - lref)).sum())
    out["KL(ref||pi)"] = grad(lambda lp: (lref.exp() * (lref - lp)).sum())
    out["KL(mu||pi)"] = grad(lambda lp: (lmu.exp() * (lmu - lp)).sum())
    out["E k2"] = grad(lambda lp: (lp.exp() * k("k2", lp)).sum())
    return out


@pytest.mark.parametrize("seed", range(3))
def test_kl_gradients_by_autograd(seed):
    g = _grads(seed)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # noqa: E731
    close(g["loss k1"], torch.zeros_like(g["loss k1"]))
    close(g["loss k2"], g["KL(pi||ref)"])
    close(g["loss k3"], g["KL(ref||pi)"])
    close(g["reward k1"], g["KL(pi||ref)"])
    close(g["reward k2"], g["E k2"] - g["KL(pi||ref)"])
    close(g["reward k3"], g["KL(pi||ref)"] - g["KL(ref||pi)"])
    close(g["off k1"], -g["KL(mu||pi)"])
    for n in ("k1", "k2", "k3"):
        close(g[f"off-IS {n}"], g[f"loss {n}"])
    assert not np.allclose(g["off k3"], g["loss k3"])  # without the weight, off-policy k3 is another gradient


def test_off_policy_k1_loss_pushes_pi_away_from_the_behaviour_policy():
    """x ~ mu, loss E_mu[log pi(x) - log r(x)]: one gradient step raises KL(mu || pi) (derive_kl_gradients'
    docstring: its gradient is -grad KL(mu || pi), so descending it ascends the KL), exact expectation, V = 50."""
    g = torch.Generator().manual_seed(3)
    z, mu, r = torch.randn(50, generator=g), torch.softmax(torch.randn(50, generator=g), -1), torch.randn(50, generator=g)
    w = z.clone().requires_grad_()
    (mu * (torch.log_softmax(w, -1) - torch.log_softmax(r, -1))).sum().backward()

    def kl_mu(zz):
        return float((mu * (mu.log() - torch.log_softmax(zz, -1))).sum())

    assert kl_mu(z - 0.5 * w.grad) > kl_mu(z) + 1e-3

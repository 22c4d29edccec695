"""Writes the theory notebooks (no outputs stored): `python notebooks/build_notebooks.py`.

One notebook per derivation family; every section is headed by the derivation's name (= the predictor's
name where there is one), shows the derivation (LaTeX from sympy), asserts its residuals are 0, and
checks one prediction numerically. The notebooks import solidrl.theory and never copy it.
tests/test_theory_notebooks.py executes each headless and checks the files match this script.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).parent

SETUP = """\
%matplotlib inline
import numpy as np, torch, matplotlib.pyplot as plt
from IPython.display import display
from solidrl.theory.predictors import PREDICTORS
torch.set_default_dtype(torch.float64)

def H(z):
    \"\"\"Exact entropy of softmax(z) per row (the measurement, computed here from scratch).\"\"\"
    lp = torch.log_softmax(z, -1)
    return -(lp.exp() * lp).sum(-1)

def KL(z0, z1):
    l0, l1 = torch.log_softmax(z0, -1), torch.log_softmax(z1, -1)
    return (l0.exp() * (l0 - l1)).sum(-1)

def show(d):
    \"\"\"Display a derivation and assert every residual simplifies to 0.\"\"\"
    display(d)
    checks = d.verify()
    assert all(checks.values()), checks
    print(f"{d.name}: {len(checks)} symbolic checks hold; source: {d.source}")
"""

ENTROPY = [
    ("md", """\
# Entropy dynamics of a softmax policy

A logit step $z \\to z + \\epsilon d$ changes the entropy by $-\\epsilon\\,\\mathrm{Cov}_\\pi(\\log\\pi, d)$ to first
order and costs $\\mathrm{KL} = \\tfrac{\\epsilon^2}{2}\\mathrm{Var}_\\pi(d)$. Each update rule induces its own $d$
(tabular SGD, natural PG, Adam's sign step); a real network adds the kernel's cross-talk.
Every section is named after its derivation `theory.*.derive_<name>`, predictor `<name>` and tests `test_<name>_*`."""),
    ("code", SETUP + "from solidrl.theory import entropy, kernel"),
    ("md", "## softmax_expansion\nSecond-order expansion of $H$ and KL, checked by sympy for $V=3$ and numerically for $V=20000$: the first-order residual has slope 2, the second-order one slope 3."),
    ("code", """\
show(entropy.derive_softmax_expansion(3))
g = torch.Generator().manual_seed(0)
z, d = 3 * torch.randn(20000, generator=g), torch.randn(20000, generator=g)
m = entropy.directional_moments(z, d)
eps = np.geomspace(1e-3, 1e-1, 12)
dH = np.array([float(H(z + e * d) - H(z)) for e in eps])
r1 = np.abs(dH + eps * float(m["cov"]))
r2 = np.abs(dH + eps * float(m["cov"]) + eps**2 / 2 * float(m["var"] + m["cov2"]))
plt.loglog(eps, r1, "o-", label="first-order residual"); plt.loglog(eps, r2, "s-", label="second-order residual")
plt.xlabel("eps"); plt.legend(); plt.title("softmax_expansion, V = 20000"); plt.show()
slopes = np.polyfit(np.log(eps[3:]), np.log(r1[3:]), 1)[0], np.polyfit(np.log(eps[3:]), np.log(r2[3:]), 1)[0]
print("slopes", slopes); assert abs(slopes[0] - 2) < 0.2 and abs(slopes[1] - 3) < 0.3"""),
    ("md", "## tabular_sgd\nOne real `torch.optim.SGD` step on per-token logits; the predictor's residual shrinks as $\\eta^2$."),
    ("code", """\
show(entropy.derive_tabular_sgd())
g = torch.Generator().manual_seed(1)
N, V = 8, 10
z = 2 * torch.randn(N, V, generator=g)
a = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(-1)
c = torch.randn(N, generator=g)

def step(opt_cls, lr):
    w = torch.nn.Parameter(z.clone()); opt = opt_cls([w], lr=lr)
    (-(c * torch.log_softmax(w, -1).gather(-1, a[:, None]).squeeze(-1)).sum()).backward(); opt.step()
    return w.detach()

def stats(lr):
    return {**entropy.token_stats(z, a), "coef": c, "lr": torch.tensor(lr)}

def residuals(name, opt_cls, lrs):
    meas = np.array([float((H(step(opt_cls, lr)) - H(z)).mean()) for lr in lrs])
    pred = np.array([PREDICTORS.get(name)(stats(lr))["entropy/delta"] for lr in lrs])
    return meas, pred, np.abs(meas - pred)

lrs = np.geomspace(1e-3, 0.2, 10)
meas, pred, res = residuals("tabular_sgd", torch.optim.SGD, lrs)
fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
ax[0].plot(lrs, meas, "o", label="measured dH"); ax[0].plot(lrs, pred, "-", label="tabular_sgd"); ax[0].legend(); ax[0].set_xlabel("lr")
ax[1].loglog(lrs, res, "o-"); ax[1].set_xlabel("lr"); ax[1].set_title("|residual|"); plt.show()
print("residual ratio when lr halves:", res[-1] / residuals("tabular_sgd", torch.optim.SGD, [lrs[-1] / 2])[2][0])"""),
    ("md", "## tabular_npg\nThe natural step $\\eta c\\,e_a/\\pi_a$; here the measured step uses the pseudo-inverse Fisher, not the formula."),
    ("code", """\
show(entropy.derive_tabular_npg())
p = torch.softmax(z, -1)
F = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
grad = c[:, None] * (torch.nn.functional.one_hot(a, V) - p)
nat = (torch.linalg.pinv(F, hermitian=True) @ grad[:, :, None]).squeeze(-1)
for lr in (2e-3, 1e-3):
    meas = float((H(z + lr * nat) - H(z)).mean())
    print(f"lr={lr}: measured {meas:.6f}  predicted {PREDICTORS.get('tabular_npg')(stats(lr))['entropy/delta']:.6f}")"""),
    ("md", "## tabular_adam\nAdam's first step is a sign step: $\\Delta z = \\eta\\,\\mathrm{sign}(c)(2e_a - 1)$."),
    ("code", """\
show(entropy.derive_tabular_adam())
meas, pred, res = residuals("tabular_adam", torch.optim.Adam, [0.02, 0.01])
print("measured", meas, "predicted", pred, "residual ratio", res[0] / res[1])"""),
    ("md", "## cov_entropy\nCui et al.'s law: averaged over the sampled token, the NPG entropy change is $-\\eta\\,\\mathrm{Cov}_\\pi(\\log\\pi, A)$; the batch covariance estimates it."),
    ("code", """\
show(entropy.derive_cov_entropy())
g = torch.Generator().manual_seed(2)
zs, A, lr = 2 * torch.randn(6, generator=g), torch.randn(6, generator=g), 0.1
ps, ls = torch.softmax(zs, -1), torch.log_softmax(zs, -1)
exact = -lr * float((ps * (ls - (ps * ls).sum()) * (A - (ps * A).sum())).sum())
Ns = [100, 1000, 10000, 100000]
est = [PREDICTORS.get("cov_entropy")({"logp": ls[i], "coef": A[i], "lr": torch.tensor(lr)})["entropy/delta"]
       for i in (torch.multinomial(ps, n, replacement=True, generator=g) for n in Ns)]
plt.semilogx(Ns, est, "o-", label="batch estimate"); plt.axhline(exact, color="k", label="exact"); plt.legend(); plt.xlabel("tokens"); plt.show()"""),
    ("md", "## jvp\nA tiny Llama (eager attention, float64): the SGD update pushed through a Jacobian-vector product predicts the one-step $\\Delta H$; the residual is second order."),
    ("code", """\
show(kernel.derive_jvp())
import transformers
torch.manual_seed(0)
cfg = transformers.LlamaConfig(vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=64, attn_implementation="eager")
model = transformers.LlamaForCausalLM(cfg).double().eval()
ids = torch.randint(0, 20, (4, 10)); mask = torch.ones_like(ids); pos = mask.cumsum(-1) - 1
sel = torch.zeros(4, 10, dtype=torch.bool); sel[:, 4:-1] = True
targets = ids[:, 1:][sel[:, :-1]]
cs = torch.randn(int(sel.sum()))

def logits_after(delta=None, scale=1.0):
    ps = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in (delta or {}).items(): ps[n].add_(scale * t)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[sel]
        for n, t in (delta or {}).items(): ps[n].sub_(scale * t)
    return out

model.zero_grad()
(-(cs * torch.log_softmax(model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[sel], -1)
   .gather(-1, targets[:, None]).squeeze(-1)).sum()).backward()
grad = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
dz1, logits0 = kernel.jvp_logit_change(model, ids, mask, pos, grad, sel, return_logits=True)  # per unit lr: dz = -lr dz1
lrs = np.geomspace(1e-4, 4e-3, 8)
meas, pred = [], []
for lr in lrs:
    cov, var = kernel.linearized_stats(logits0, -lr * dz1)
    pred.append(PREDICTORS.get("jvp")({"jvp_cov": cov, "jvp_var": var})["entropy/delta"])
    meas.append(float((H(logits_after(grad, -lr)) - H(logits0)).mean()))
res = np.abs(np.array(meas) - np.array(pred))
plt.loglog(lrs, res, "o-", label="|measured - jvp|"); plt.loglog(lrs, np.abs(pred), "--", label="|jvp prediction|")
plt.xlabel("lr"); plt.legend(); plt.show()
print("residual slope", np.polyfit(np.log(lrs), np.log(res), 1)[0])"""),
    ("md", "## jvp2\nSecond-order logits $\\tilde z = z + dz_1 + \\tfrac12 dz_2$ along the step ($dz_2$ by a jvp of a jvp) and the *exact* entropy and KL on $\\tilde z$. On the same Llama, swept over the step size: the residual after a k-th order predictor shrinks at least like $\\eta^{k+1}$: jvp's has slope 2 (dH) and at least 3 (KL), jvp2's at least 3 and 4 (`kernel.ORDERS`; `kernel.residual_order` reads the slopes)."),
    ("code", """\
show(kernel.derive_jvp2())
def KLrows(z0, z1):
    l0, l1 = torch.log_softmax(z0, -1), torch.log_softmax(z1, -1)
    return float((l0.exp() * (l0 - l1)).sum(-1).mean())
lrs = np.array([4e-3, 2e-3, 1e-3, 5e-4])
res = {k: [] for k in ("jvp dH", "jvp KL", "jvp2 dH", "jvp2 KL")}
for lr in lrs:
    d = {n: -lr * t for n, t in grad.items()}
    z0, a, b = kernel.jvp2_logit_change(model, ids, mask, pos, d, sel)
    z1 = logits_after(grad, -lr)
    dH, kl_ = float((H(z1) - H(z0)).mean()), KLrows(z0, z1)
    cov, var = kernel.linearized_stats(z0, a)
    p1 = PREDICTORS.get("jvp")({"jvp_cov": cov, "jvp_var": var}); p2 = PREDICTORS.get("jvp2")(kernel.expanded_stats(z0, a, b))
    res["jvp dH"].append(abs(p1["entropy/delta"] - dH)); res["jvp KL"].append(abs(p1["kl/step"] - kl_))
    res["jvp2 dH"].append(abs(p2["entropy/delta"] - dH)); res["jvp2 KL"].append(abs(p2["kl/step"] - kl_))
for k, v in res.items():
    plt.loglog(lrs, v, "o-", label=k); print(k, "slopes", np.round(kernel.residual_order(v), 2))
plt.xlabel("lr"); plt.ylabel("|residual|"); plt.legend(); plt.title("jvp vs jvp2 residuals (eager attention: float32 floor ~1e-9)"); plt.show()"""),
    ("md", "## jvp3\nThird-order logits $\\tilde z_3 = \\tilde z + \\tfrac16 dz_3$ ($dz_3$ by three nested jvps) and the exact entropy and KL on them. What $dz_3$ adds to jvp2 is $-\\mathrm{Cov}_\\pi(\\log\\pi, dz_3)/6$ on dH at $\\eta^3$ and $\\mathrm{Cov}_\\pi(dz_1, dz_3)/6$ on the KL at $\\eta^4$; on nano at the trainer's lr 3e-4 that is jvp2's whole KL error (docs/transfer.md). On the same Llama the residual slopes (printed) are steeper than jvp2's: a residual one order higher, above the float32 floor of eager attention."),
    ("code", """\
show(kernel.derive_jvp3())
lrs = np.array([8e-3, 4e-3, 2e-3])
res = {k: [] for k in ("jvp2 dH", "jvp2 KL", "jvp3 dH", "jvp3 KL")}
for lr in lrs:
    d = {n: -lr * t for n, t in grad.items()}
    z0, dzs = kernel.jvp_taylor_logits(model, ids, mask, pos, d, sel, 3)
    z1 = logits_after(grad, -lr)
    dH, kl_ = float((H(z1) - H(z0)).mean()), KLrows(z0, z1)
    st = kernel.logit_order_stats(z0, dzs)
    p2, p3 = PREDICTORS.get("jvp2")(st), PREDICTORS.get("jvp3")(st)
    res["jvp2 dH"].append(abs(p2["entropy/delta"] - dH)); res["jvp2 KL"].append(abs(p2["kl/step"] - kl_))
    res["jvp3 dH"].append(abs(p3["entropy/delta"] - dH)); res["jvp3 KL"].append(abs(p3["kl/step"] - kl_))
for k, v in res.items():
    plt.loglog(lrs, v, "o-", label=k); print(k, "slopes", np.round(kernel.residual_order(v), 2))
plt.xlabel("lr"); plt.ylabel("|residual|"); plt.legend(); plt.title("jvp2 vs jvp3 residuals"); plt.show()"""),
    ("md", "## jvp_fd\nThe cheap route to $dz_2$ and $dz_3$ (`probes.jvp_mode = \"fd\"`): the jvp's exact $dz_1$ plus two forwards at $\\theta \\pm h\\Delta\\theta$, central differences with $O(h^2)$ truncation: the jvp's cost plus two forwards, against 12 and 38 forwards for the nested jvp2 and jvp3 (bench/jvp_cost.py). On the Llama: the stencils' error against the nested pass falls about 4x per halving of h until float32 rounding ($\\sim 10^{-7}|z| \\cdot 6/h^3$ in $dz_3$) takes over."),
    ("code", """\
show(kernel.derive_jvp_fd())
d = {n: -4e-3 * t for n, t in grad.items()}
z0, nested = kernel.jvp_taylor_logits(model, ids, mask, pos, d, sel, 3)
for h in (1.0, 0.5, 0.25, 0.125):
    _, fd = kernel.fd_taylor_logits(model, ids, mask, pos, d, sel, h)
    e2, e3 = (float((a - b).abs().max() / b.abs().max()) for a, b in zip(fd[1:], nested[1:]))
    print(f"h {h:5.3f}: max rel. error dz2 {e2:.2e}, dz3 {e3:.2e}")"""),
    ("md", "## jvp1s\nFirst-order logits with the exact softmax functionals: not a better predictor, but the first cut of the residual. What jvp misses splits into the softmax's nonlinearity on the first-order logits (jvp1s - jvp), the logits' curvature (jvp2 - jvp1s, leading term $-\\mathrm{Cov}_\\pi(\\log\\pi, dz_2)/2$ on dH), the third-order logits (jvp3 - jvp2) and what is left (measured - jvp3). `solidrl transfer` prints this decomposition per model."),
    ("code", """\
show(kernel.derive_jvp1s())
lr = 4e-3
d = {n: -lr * t for n, t in grad.items()}
z0, dzs = kernel.jvp_taylor_logits(model, ids, mask, pos, d, sel, 3)
z1 = logits_after(grad, -lr)
st = kernel.logit_order_stats(z0, dzs)
cov, var = kernel.linearized_stats(z0, dzs[0])
p = {"jvp": PREDICTORS.get("jvp")({"jvp_cov": cov, "jvp_var": var}), **{n: PREDICTORS.get(n)(st) for n in ("jvp1s", "jvp2", "jvp3")}}
meas = {"entropy/delta": float((H(z1) - H(z0)).mean()), "kl/step": KLrows(z0, z1)}
for m in meas:
    parts = {"first order (jvp)": p["jvp"][m], "softmax nonlinearity": p["jvp1s"][m] - p["jvp"][m],
             "logit curvature": p["jvp2"][m] - p["jvp1s"][m], "third-order logits": p["jvp3"][m] - p["jvp2"][m],
             "rest": meas[m] - p["jvp3"][m]}
    print(m, "measured", f"{meas[m]:.4g}", "=", " + ".join(f"{v:.3g} ({k})" for k, v in parts.items()))"""),
    ("md", "## trust_region\nThe KL trust region (trainer/trust_region.py, `optim.trust_region_kl`): scale the step so that jvp2's KL is $\\delta$, by $s \\leftarrow s\\sqrt{\\delta / \\mathrm{KL}(s)}$; the exact KL of the scaled step lands on $\\delta$."),
    ("code", """\
show(kernel.derive_trust_region())
d = {n: -2e-3 * t for n, t in grad.items()}
z0, a, b = kernel.jvp2_logit_change(model, ids, mask, pos, d, sel)
for delta in (1e-3, 1e-2):
    s = 1.0
    for _ in range(30):
        s = s * np.sqrt(delta / float(kernel.expanded_stats(z0, a, b, s)["jvp2_kl"].mean()))
    print(f"delta {delta:g}: scale {s:.3f}, exact KL of the scaled step {KLrows(z0, logits_after(grad, -2e-3 * s)):.4g}")"""),
    ("md", "## kernel_crosstalk\nThe same step predicted with the identity kernel (tabular_sgd) misses the cross-talk between tokens through the shared parameters."),
    ("code", """\
show(kernel.derive_kernel_crosstalk())
lr = 5e-4
cov, var = kernel.linearized_stats(logits0, -lr * dz1)
st = {**entropy.token_stats(logits0, targets), "coef": cs, "lr": torch.tensor(lr), "jvp_cov": cov, "jvp_var": var}
print("measured", float((H(logits_after(grad, -lr)) - H(logits0)).mean()))
for name in ("jvp", "tabular_sgd", "kernel_crosstalk"):
    print(name, PREDICTORS.get(name)(st))"""),
]

KL_NB = [
    ("md", """\
# KL estimators k1, k2, k3

Schulman's estimators of $\\mathrm{KL}(\\pi\\|\\pi_{ref})$ from tokens $x \\sim \\pi$, $\\rho = \\pi_{ref}(x)/\\pi(x)$:
$k_1 = -\\log\\rho$, $k_2 = \\tfrac12(\\log\\rho)^2$, $k_3 = \\rho - 1 - \\log\\rho$; their bias and variance, and the
gradient each induces as a loss or as a reward penalty."""),
    ("code", SETUP + "from solidrl.theory import kl"),
    ("md", "## kl_estimators\nExact expectations and the leading order of each bias and variance in the reference's distance $\\epsilon$."),
    ("code", """\
show(kl.derive_kl_estimators(3))
g = torch.Generator().manual_seed(0)
z, d = 2 * torch.randn(1000, generator=g), torch.randn(1000, generator=g).exp()
eps = np.geomspace(1e-3, 0.3, 12)
rows = []
for e in eps:
    lp, lr = torch.log_softmax(z, -1), torch.log_softmax(z + e * d, -1)
    p, x = lp.exp(), lr - lp
    ks = {"k1": -x, "k2": x**2 / 2, "k3": torch.expm1(x) - x}
    KLv = float((p * -x).sum())
    rows.append([KLv] + [float((p * (k - (p * k).sum()) ** 2).sum()) ** 0.5 / KLv for k in ks.values()]
                + [float((p * ks["k2"]).sum()) / KLv - 1])
rows = np.array(rows)
fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
for i, n in enumerate(("k1", "k2", "k3")):
    ax[0].loglog(eps, rows[:, 1 + i], label=n)
ax[0].set_title("relative std (std / KL)"); ax[0].set_xlabel("eps"); ax[0].legend()
ax[1].loglog(eps, np.abs(rows[:, 4])); ax[1].set_title("|relative bias of k2|"); ax[1].set_xlabel("eps"); plt.show()
assert np.all(np.diff(rows[:, 1]) < 0)  # k1's relative std grows as the KL shrinks"""),
    ("md", "## kl_gradients\nAs a loss: k1 gives zero, k2 the reverse-KL gradient, k3 the forward-KL gradient. As a reward: k1 gives the reverse KL. Off-policy, k1 as a loss pushes pi away from the behaviour policy (its gradient ascends KL(mu||pi))."),
    ("code", """\
show(kl.derive_kl_gradients(3))
g = torch.Generator().manual_seed(1)
zz = (2 * torch.randn(6, generator=g)).requires_grad_()
lref = torch.log_softmax(2 * torch.randn(6, generator=g), -1)
def grad(f):
    return torch.autograd.grad(f(torch.log_softmax(zz, -1)), zz)[0]
p = torch.softmax(zz, -1).detach()
k3_loss = grad(lambda lp: (p * (torch.expm1(lref - lp) - (lref - lp))).sum())
fwd = grad(lambda lp: (lref.exp() * (lref - lp)).sum())
print("k3 loss gradient ", k3_loss.numpy().round(6)); print("grad KL(ref||pi) ", fwd.numpy().round(6))
assert torch.allclose(k3_loss, fwd)"""),
]

ADV_NB = [
    ("md", """\
# Advantage estimators and aggregation

GRPO is Dr.GRPO with each group reweighted by $1/\\sigma_g$ ($\\sigma_g = \\sqrt{p_g(1-p_g)}$ for binary rewards); RLOO is
unbiased; each aggregation mode puts its own length weight on a token."""),
    ("code", SETUP + "from solidrl.theory import advantages"),
    ("md", "## grpo_gradnorm_ratio\nPredicted $\\|g_{grpo}\\|/\\|g_{dr}\\|$ from the group success rates, against the actual ratio on a bandit with many arms (distinct responses)."),
    ("code", """\
show(advantages.derive_grpo_gradnorm_ratio())
def actual_and_pred(p_success, K=5000, G=8, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, K, generator=g)
    arm_r = (torch.rand(n, K, generator=g) < p_success).double()
    o = torch.multinomial(torch.softmax(z, -1), G, replacement=True, generator=g)
    r = arm_r.gather(1, o)
    norms = []
    for A in ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, correction=0) + 1e-6), r - r.mean(1, keepdim=True)):
        w = z.clone().requires_grad_(); (-(A * torch.log_softmax(w, -1).gather(1, o)).sum()).backward(); norms.append(float(w.grad.norm()))
    st = {"reward": r.flatten(), "group_index": torch.arange(n).repeat_interleave(G), "grpo_std_eps": torch.tensor(1e-6)}
    return norms[0] / norms[1], PREDICTORS.get("grpo_gradnorm_ratio")(st)["grad/norm_ratio_vs_dr_grpo"]
ps = [0.05, 0.1, 0.2, 0.35, 0.5]
pairs = np.array([actual_and_pred(p) for p in ps])
plt.plot(ps, pairs[:, 0], "o", label="actual"); plt.plot(ps, pairs[:, 1], "-", label="predicted")
plt.xlabel("success rate"); plt.ylabel("||g_grpo|| / ||g_dr||"); plt.legend(); plt.show()
assert np.allclose(pairs[:, 0], pairs[:, 1], rtol=0.1)"""),
    ("md", "## rloo_unbiased\nExact expected gradients on a 2-arm bandit by enumerating all $2^G$ outcomes."),
    ("code", """\
d = advantages.derive_rloo_unbiased(4)
show(d)
import sympy as sp
pp = np.linspace(0.01, 0.99, 99)
for key in ("E grad/rloo", "E grad/dr_grpo", "E grad/grpo", "true"):
    plt.plot(pp, sp.lambdify(d.symbols["p"], d.result[key])(pp) * np.ones_like(pp), label=key)
plt.xlabel("p"); plt.legend(); plt.title("expected gradient, G = 4"); plt.show()"""),
    ("md", "## aggregation_weights\nThe weight $\\partial L/\\partial \\ell_{b,t}$ each mode puts on a token of a length-$L_b$ response."),
    ("code", """\
d = advantages.derive_aggregation_weights()
show(d)
L = np.arange(1, 65); B, C, S = 8, 64, 8 * 32
for mode, f in d.result.items():
    w = sp.lambdify([d.symbols[k] for k in "LBCS"], f)(L, B, C, S) * np.ones_like(L, dtype=float)
    plt.plot(L, L * w, label=mode)
plt.xlabel("response length L_b"); plt.ylabel("weight of the whole response"); plt.legend(); plt.show()"""),
]

OFF_NB = [
    ("md", """\
# Off-policy corrections

The importance ratio is (staleness) x (mismatch); with Gaussian per-token log-ratios the PPO clip fraction and
the TIS / IcePop touched fractions follow from the log-ratios' spread."""),
    ("code", SETUP + "from solidrl.theory import offpolicy"),
    ("md", "## ratio_decomposition\nAfter one step, the staleness log-ratio's second moment is $2\\,\\mathrm{KL}_{step}$."),
    ("code", """\
show(offpolicy.derive_ratio_decomposition())
g = torch.Generator().manual_seed(0)
z, d = 2 * torch.randn(500, generator=g), torch.randn(500, generator=g)
eps = np.geomspace(1e-3, 0.3, 10)
ratio = []
for e in eps:
    l0, l1 = torch.log_softmax(z, -1), torch.log_softmax(z + e * d, -1)
    p = l0.exp(); ratio.append(float((p * (l1 - l0) ** 2).sum() / (2 * (p * (l0 - l1)).sum())))
plt.semilogx(eps, ratio, "o-"); plt.axhline(1, color="k"); plt.ylabel("E(log ratio)^2 / (2 KL)"); plt.xlabel("eps"); plt.show()"""),
    ("md", "## clip_frac\nPredicted fraction of tokens whose PPO clip is active, against Monte Carlo counts on Gaussian log-ratios."),
    ("code", """\
show(offpolicy.derive_clip_frac())
g = torch.Generator().manual_seed(1)
n = 50_000
adv = torch.randn(n, generator=g)
ss = np.linspace(0.01, 0.6, 8)
pred, mc = [], []
for s in ss:
    lr = s * torch.randn(n, generator=g)
    r = lr.exp()
    mc.append(float((((adv > 0) & (r > 1.2)) | ((adv < 0) & (r < 0.8))).double().mean()))
    pred.append(PREDICTORS.get("clip_frac")({"log_ratio": lr, "adv": adv, "eps_low": torch.tensor(0.2), "eps_high": torch.tensor(0.2)})["ratio/clip_frac"])
plt.plot(ss, mc, "o", label="Monte Carlo"); plt.plot(ss, pred, "-", label="clip_frac"); plt.xlabel("std of log ratio"); plt.legend(); plt.show()
assert np.allclose(pred, mc, atol=0.01)"""),
    ("md", "## tis\nTruncated IS $w = \\min(\\rho, C)$: touched fraction and mean weight."),
    ("code", """\
show(offpolicy.derive_tis())
pred, mc = [], []
for s in ss:
    lr = s * torch.randn(n, generator=g) - s**2 / 2  # E rho = 1: the ratio of two distributions
    mc.append(float((lr.exp() > 2.0).double().mean()))
    pred.append(PREDICTORS.get("tis")({"log_ratio": lr, "tis_cap": torch.tensor(2.0)})["correction/touched_frac"])
plt.semilogy(ss, np.maximum(mc, 1e-6), "o", label="Monte Carlo"); plt.semilogy(ss, pred, "-", label="tis"); plt.xlabel("std of log ratio"); plt.legend(); plt.show()"""),
    ("md", "## icepop\nIcePop $w = \\rho\\,1[\\alpha \\le \\rho \\le \\beta]$: touched fraction and mean weight (the lost mass is the bias)."),
    ("code", """\
show(offpolicy.derive_icepop())
lr = 0.5 * torch.randn(n, generator=g) - 0.125
out = PREDICTORS.get("icepop")({"log_ratio": lr, "icepop_low": torch.tensor(0.5), "icepop_high": torch.tensor(2.0)})
w = torch.where((lr.exp() >= 0.5) & (lr.exp() <= 2.0), lr.exp(), torch.zeros(()))
print(out, "Monte Carlo:", float((w == 0).double().mean()), float(w.mean()))"""),
    ("md", "## tis_two_sided\nTwo-sided TIS $w = \\mathrm{clamp}(\\rho, l, C)$: tokens raised to the floor or cut to the cap are touched."),
    ("code", """\
show(offpolicy.derive_tis_two_sided())
lr = 0.5 * torch.randn(n, generator=g) - 0.125
out = PREDICTORS.get("tis_two_sided")({"log_ratio": lr, "tis_low": torch.tensor(0.5), "tis_cap": torch.tensor(2.0)})
mc = float(((lr.exp() < 0.5) | (lr.exp() > 2.0)).double().mean())
print(out, "Monte Carlo touched:", mc)
assert abs(out["correction/touched_frac"] - mc) < 0.01"""),
    ("md", "## seq_tis\nSequence-level TIS: a row of $L$ tokens is touched when $\\sum_t X_t \\sim N(Lm, Ls^2)$ exceeds $\\log C$."),
    ("code", """\
show(offpolicy.derive_seq_tis())
Ls = [1, 2, 4, 8, 16, 32]
pred, mc = [], []
for L in Ls:
    x = 0.25 * torch.randn(4000, L, generator=g) - 0.03
    pred.append(PREDICTORS.get("seq_tis")({"log_ratio": x.flatten(), "seq_index": torch.arange(4000).repeat_interleave(L),
                                           "tis_cap": torch.tensor(2.0)})["correction/touched_frac"])
    mc.append(float((x.sum(-1) > np.log(2.0)).double().mean()))
plt.plot(Ls, mc, "o", label="Monte Carlo"); plt.plot(Ls, pred, "-", label="seq_tis"); plt.xscale("log"); plt.xlabel("L"); plt.legend(); plt.show()
assert np.allclose(pred, mc, atol=0.03)"""),
    ("md", "## masked_seq_is\nRows rejected on their geometric-mean ratio: the mean log-ratio of $L$ independent tokens is $N(m, s^2/L)$."),
    ("code", """\
show(offpolicy.derive_masked_seq_is())
pred, mc = [], []
for L in Ls:
    x = 0.5 * torch.randn(4000, L, generator=g)
    pred.append(PREDICTORS.get("masked_seq_is")({"log_ratio": x.flatten(), "seq_index": torch.arange(4000).repeat_interleave(L),
                                                 "seq_low": torch.tensor(0.8), "seq_high": torch.tensor(1.25)})["correction/touched_frac"])
    gm = x.mean(-1).exp()
    mc.append(float(((gm < 0.8) | (gm > 1.25)).double().mean()))
plt.plot(Ls, mc, "o", label="Monte Carlo"); plt.plot(Ls, pred, "-", label="masked_seq_is"); plt.xscale("log"); plt.xlabel("L"); plt.legend(); plt.show()
assert np.allclose(pred, mc, atol=0.03)"""),
    ("md", "## geo_rs\nGeo-RS rejects the same rows without IS (a kept token keeps weight 1), so its touched fraction is masked_seq_is's."),
    ("code", """\
show(offpolicy.derive_geo_rs())
st = {"log_ratio": x.flatten(), "seq_index": torch.arange(4000).repeat_interleave(Ls[-1]), "seq_low": torch.tensor(0.8), "seq_high": torch.tensor(1.25)}
print(PREDICTORS.get("geo_rs")(st), PREDICTORS.get("masked_seq_is")(st))"""),
]

NOTEBOOKS = {
    "entropy_dynamics.ipynb": ENTROPY,
    "kl_estimators.ipynb": KL_NB,
    "advantage_estimators.ipynb": ADV_NB,
    "off_policy.ipynb": OFF_NB,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # stable ids: rebuilding gives the same file
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(cells), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()

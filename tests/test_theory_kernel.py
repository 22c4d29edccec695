"""Kernel form (theory.kernel): the JVP logit change on a real transformers model, and the predictors on it.

Model: a tiny LlamaForCausalLM (hidden 32, 2 layers, vocab 20) in float64 with eager attention
(forward-mode AD fails under CPU SDPA). Eager attention's softmax upcasts to float32, so logits carry
~1e-7 relative noise: finite-difference and residual checks are sized well above it. No left padding
here: in float64, eager attention turns a fully masked (padding) query row into NaN (transformers 5).
"""
import pytest
import torch
from types import SimpleNamespace

from solidrl.theory import entropy, kernel
from solidrl.theory.predictors import PREDICTORS

transformers = pytest.importorskip("transformers")
torch.set_default_dtype(torch.float64)


def H(logits):
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).double().eval()
    B, T = 4, 10
    ids = torch.randint(0, 20, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    sel = torch.zeros(B, T, dtype=torch.bool)
    sel[:, 4:-1] = True  # the rows that predict "response" tokens ids[:, 5:]
    return SimpleNamespace(model=model, ids=ids, mask=mask, pos=pos, sel=sel, targets=ids[:, 1:][sel[:, :-1]])


def forward(m, shift=None, scale=0.0):
    """Logits at the selected rows with parameters theta + scale * shift (restored afterwards)."""
    params = dict(m.model.named_parameters())
    with torch.no_grad():
        for n, d in (shift or {}).items():
            params[n].add_(scale * d)
        out = m.model(input_ids=m.ids, attention_mask=m.mask, position_ids=m.pos).logits[m.sel]
        for n, d in (shift or {}).items():
            params[n].sub_(scale * d)
    return out.double()


def pg_update(m, lr, seed=0):
    """The SGD update dtheta = -lr grad of loss = -sum_t c_t log pi(a_t) at the selected rows, and the coefs."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(int(m.sel.sum()), generator=g)
    m.model.zero_grad()
    logits = m.model(input_ids=m.ids, attention_mask=m.mask, position_ids=m.pos).logits[m.sel]
    (-(c * torch.log_softmax(logits, -1).gather(-1, m.targets[:, None]).squeeze(-1)).sum()).backward()
    return {n: -lr * p.grad.detach().clone() for n, p in m.model.named_parameters()}, c


def jvp_stats(m, delta):
    dz, logits = kernel.jvp_logit_change(m.model, m.ids, m.mask, m.pos, delta, m.sel, return_logits=True)
    cov, var = kernel.linearized_stats(logits, dz)
    return {"jvp_cov": cov, "jvp_var": var}, dz, logits


def test_jvp_symbolic():
    assert all(kernel.derive_jvp().verify().values())


def test_kernel_crosstalk_symbolic():
    assert all(kernel.derive_kernel_crosstalk().verify().values())


def test_jvp_logit_change_matches_finite_difference(llama):
    g = torch.Generator().manual_seed(1)
    delta = {n: 0.01 * torch.randn(p.shape, generator=g) for n, p in llama.model.named_parameters()}
    _, dz, logits = jvp_stats(llama, delta)
    assert torch.allclose(logits, forward(llama))
    h = 1e-3
    fd = (forward(llama, delta, h) - forward(llama, delta, -h)) / (2 * h)
    # central difference error ~ h^2 (tiny) + float32 softmax noise ~ 1e-7 / h = 1e-4 relative
    assert (fd - dz).abs().max() < 1e-3 * dz.abs().max(), float((fd - dz).abs().max())


def test_jvp_logit_change_with_left_padding_under_math_sdpa(llama):
    """The recorder's path: SDPA attention forced to the math backend, left-padded rows (no NaN)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = transformers.LlamaForCausalLM(llama.model.config.__class__(**{
        **llama.model.config.to_dict(), "attn_implementation": "sdpa"})).double().eval()
    model.load_state_dict(llama.model.state_dict())
    mask = llama.mask.clone()
    mask[0, :3] = 0  # left padding of row 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    g = torch.Generator().manual_seed(3)
    delta = {n: 0.01 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    params = dict(model.named_parameters())

    def logits(scale):
        with torch.no_grad():
            for n, d in delta.items():
                params[n].add_(scale * d)
            out = model(input_ids=llama.ids, attention_mask=mask, position_ids=pos).logits[llama.sel]
            for n, d in delta.items():
                params[n].sub_(scale * d)
        return out

    with sdpa_kernel(SDPBackend.MATH):
        dz = kernel.jvp_logit_change(model, llama.ids, mask, pos, delta, llama.sel)
        fd = (logits(1e-3) - logits(-1e-3)) / 2e-3
    assert torch.isfinite(dz).all()
    assert (fd - dz).abs().max() < 1e-3 * dz.abs().max()


def test_jvp_logit_change_only_named_parameters_move(llama):
    name = "model.layers.1.mlp.down_proj.weight"
    delta = {name: torch.randn_like(dict(llama.model.named_parameters())[name])}
    _, dz, _ = jvp_stats(llama, delta)
    fd = (forward(llama, delta, 1e-3) - forward(llama, delta, -1e-3)) / 2e-3
    assert (fd - dz).abs().max() < 1e-3 * dz.abs().max()
    with pytest.raises(KeyError, match="no_such"):
        kernel.jvp_logit_change(llama.model, llama.ids, llama.mask, llama.pos, {"no_such": dz}, llama.sel)


def test_jvp_predicts_one_step_entropy_change_to_first_order(llama):
    """An actual SGD step of a PG loss; the jvp prediction's residual shrinks ~4x when lr halves.

    With random coefficients the first-order term is small against the second-order one (measured at
    lr = 5e-4: dH = -3.0e-4, predicted -2.2e-4), so the check is the residual's order, not its size.
    """
    H0 = H(forward(llama))
    res = []
    for lr in (1e-3, 5e-4):
        delta, _ = pg_update(llama, lr)
        st, _, _ = jvp_stats(llama, delta)
        measured = float((H(forward(llama, delta, 1.0)) - H0).mean())
        pred = PREDICTORS.get("jvp")(st)["entropy/delta"]
        assert abs(measured - pred) < 0.5 * abs(measured), (lr, measured, pred)
        res.append(abs(measured - pred))
    assert 3.0 < res[0] / res[1] < 5.0, res


def test_jvp_kl_matches_measured_kl_to_second_order(llama):
    delta, _ = pg_update(llama, 5e-4)
    st, _, logits = jvp_stats(llama, delta)
    l0, l1 = torch.log_softmax(logits, -1), torch.log_softmax(forward(llama, delta, 1.0), -1)
    measured = float((l0.exp() * (l0 - l1)).sum(-1).mean())
    # third-order terms: measured 1.5% off at lr = 5e-4 (3% at 1e-3)
    assert PREDICTORS.get("jvp")(st)["kl/step"] == pytest.approx(measured, rel=0.03)


class Table(torch.nn.Module):
    """A tabular policy shaped like a causal LM: one free row of logits per (sequence, position)."""

    def __init__(self, z):
        super().__init__()
        self.z = torch.nn.Parameter(z.clone())

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        return SimpleNamespace(logits=self.z)


def test_jvp_on_a_table_equals_tabular_sgd_and_crosstalk_is_zero():
    """Kernel = identity: pushing the SGD update through the JVP gives exactly the tabular prediction."""
    g = torch.Generator().manual_seed(2)
    B, T, V, lr = 3, 5, 11, 0.1
    table = Table(2 * torch.randn(B, T, V, generator=g))
    sel = torch.rand(B, T, generator=g) < 0.7
    a = torch.randint(0, V, (int(sel.sum()),), generator=g)
    c = torch.randn(len(a), generator=g)
    (-(c * torch.log_softmax(table.z[sel], -1).gather(-1, a[:, None]).squeeze(-1)).sum()).backward()
    delta = {"z": -lr * table.z.grad}
    dz, logits = kernel.jvp_logit_change(table, None, None, None, delta, sel, return_logits=True)
    cov, var = kernel.linearized_stats(logits, dz)
    st = {**entropy.token_stats(logits, a), "coef": c, "lr": torch.tensor(lr), "jvp_cov": cov, "jvp_var": var}
    tab, jv = PREDICTORS.get("tabular_sgd")(st), PREDICTORS.get("jvp")(st)
    assert jv["entropy/delta"] == pytest.approx(tab["entropy/delta"], rel=1e-10)
    assert jv["kl/step"] == pytest.approx(tab["kl/step"], rel=1e-10)
    assert abs(PREDICTORS.get("kernel_crosstalk")(st)["entropy/crosstalk"]) < 1e-14


def test_kernel_crosstalk_on_a_network_is_jvp_minus_tabular(llama):
    lr = 5e-4
    delta, c = pg_update(llama, lr)
    st, _, logits = jvp_stats(llama, delta)
    st = {**st, **entropy.token_stats(logits, llama.targets), "coef": c, "lr": torch.tensor(lr)}
    gap = PREDICTORS.get("kernel_crosstalk")(st)["entropy/crosstalk"]
    want = PREDICTORS.get("jvp")(st)["entropy/delta"] - PREDICTORS.get("tabular_sgd")(st)["entropy/delta"]
    assert gap == pytest.approx(want, rel=1e-12)
    assert abs(gap) > 1e-3 * abs(want) or want == 0  # a shared network does cross-talk
    # the JVP on a subset of tokens (docs/contracts.md jvp_index): the tabular side is taken on the same tokens
    idx = torch.tensor([0, 3, 4, 9])
    sub = {**st, "jvp_cov": st["jvp_cov"][idx], "jvp_var": st["jvp_var"][idx], "jvp_index": idx}
    tab_sub = {k: (v[idx] if v.dim() else v) for k, v in st.items() if not k.startswith("jvp")}
    want_sub = PREDICTORS.get("jvp")(sub)["entropy/delta"] - PREDICTORS.get("tabular_sgd")(tab_sub)["entropy/delta"]
    assert PREDICTORS.get("kernel_crosstalk")(sub)["entropy/crosstalk"] == pytest.approx(want_sub, rel=1e-12)

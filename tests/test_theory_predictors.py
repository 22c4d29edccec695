"""The predictor registry: every name leads to its derivation, notebook section and tests in one step;
missing stats fail with a one-line KeyError naming the key; non-computable metrics are absent.
"""
import json
import re
from pathlib import Path

import pytest
import torch

from solidrl.theory import advantages, entropy, kernel, kl, offpolicy
from solidrl.theory.derivation import Derivation
from solidrl.theory.predictors import PREDICTORS, MissingStatError
from solidrl.theory.registry import UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
MODULES = (entropy, kernel, advantages, kl, offpolicy)


def _notebook_sections():
    out = {}
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            src = "".join(cell["source"])
            for m in re.finditer(r"^## (\w+)", src, flags=re.M):
                out[m.group(1)] = nb.name
    return out


def _test_names():
    return set(re.findall(r"^def (test_\w+)", "".join(p.read_text() for p in (ROOT / "tests").glob("test_theory_*.py")), re.M))


def test_at_least_the_issue_predictors_are_registered():
    want = {"tabular_sgd", "tabular_npg", "cov_entropy", "jvp", "grpo_gradnorm_ratio", "clip_frac", "tis", "icepop"}
    assert want <= set(PREDICTORS.names())


@pytest.mark.parametrize("name", PREDICTORS.names())
def test_predictor_name_leads_to_derivation_notebook_and_tests(name):
    fn = PREDICTORS.get(name)
    assert fn.derivation.__name__ == f"derive_{name}"
    assert any(getattr(m, f"derive_{name}", None) is fn.derivation for m in MODULES)
    assert name in _notebook_sections(), f"no notebook section '## {name}'"
    assert any(t.startswith(f"test_{name}_") for t in _test_names()), f"no test_{name}_*"
    d = fn.derivation()
    assert isinstance(d, Derivation) and d.name == name
    assert fn.__doc__ and "Derivation:" in fn.__doc__


def test_every_derivation_has_a_notebook_section_and_a_test():
    sections, tests = _notebook_sections(), _test_names()
    for m in MODULES:
        for attr in dir(m):
            if attr.startswith("derive_"):
                name = attr[len("derive_"):]
                assert name in sections, name
                assert any(t.startswith(f"test_{name}_") for t in tests), name


def test_a_wrong_formula_does_not_verify():
    """The residual machinery can fail: drop the -H sum_p2 term of tabular_sgd and a check turns False."""
    from dataclasses import replace
    from solidrl.theory.derivation import STAT, Softmax
    d = entropy.derive_tabular_sgd(3)
    wrong = d.result["entropy/delta"].subs(STAT["sum_p2"], 0)
    sm = Softmax(3)
    direct = -sm.cov(sm.logp, [STAT["lr"] * STAT["coef"] * (e - q) for e, q in zip(sm.onehot(0), sm.p)])
    assert replace(d, residuals={"wrong": sm.matches(wrong, direct, 0)}).verify() == {"wrong": False}


STATS_NEEDED = {
    "tabular_sgd": "sum_p2", "tabular_npg": "logp", "tabular_adam": "coef", "cov_entropy": "lr", "jvp": "jvp_var",
    "kernel_crosstalk": "jvp_cov", "grpo_gradnorm_ratio": "group_index", "clip_frac": "adv", "tis": "log_ratio",
    "icepop": "log_ratio", "jvp2": "jvp2_kl", "jvp3": "jvp3_dH", "jvp1s": "jvp1s_kl_reverse",
    "trust_region": "trust_region_kl",
    "tis_two_sided": "tis_low", "seq_tis": "seq_index", "masked_seq_is": "seq_low", "geo_rs": "seq_high",
}


def full_stats(N=5):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, 7, generator=g, dtype=torch.float64)
    return {**entropy.token_stats(logits, torch.zeros(N, dtype=torch.long)), "coef": torch.randn(N, dtype=torch.float64),
            "lr": torch.tensor(0.1), "adv": torch.randn(N), "log_ratio": 0.1 * torch.randn(N), "seq_index": torch.zeros(N),
            "jvp_cov": torch.randn(N), "jvp_var": torch.rand(N), "reward": torch.tensor([1.0, 0, 1, 1]),
            "group_index": torch.tensor([0, 0, 1, 1]), "jvp2_dH": torch.randn(N), "jvp2_kl": torch.rand(N),
            "jvp2_kl_reverse": torch.rand(N),
            **{f"{p}_{k}": (torch.randn(N) if k == "dH" else torch.rand(N)) for p in ("jvp3", "jvp1s")
               for k in ("dH", "kl", "kl_reverse")},
            # the run's settings (docs/contracts.md, "Scalars"), as probes.recorder.run_scalars writes them
            **{k: torch.tensor(v, dtype=torch.float64) for k, v in {
                "eps_low": 0.2, "eps_high": 0.28, "tis_cap": 2.0, "icepop_low": 0.5, "icepop_high": 2.0,
                "grpo_std_eps": 1e-6, "trust_region_kl": 0.01,
                "tis_low": 0.5, "seq_low": 0.5, "seq_high": 2.0}.items()}}


@pytest.mark.parametrize("name,key", sorted(STATS_NEEDED.items()))
def test_missing_stat_raises_a_one_line_keyerror_naming_it(name, key):
    st = full_stats()
    assert PREDICTORS.get(name)(st)  # complete stats: something predicted
    del st[key]
    with pytest.raises(KeyError) as e:
        PREDICTORS.get(name)(st)
    assert isinstance(e.value, MissingStatError)
    msg = str(e.value)
    assert repr(key) in msg and repr(name) in msg and "\n" not in msg


@pytest.mark.parametrize("name", [n for n in STATS_NEEDED if n not in ("grpo_gradnorm_ratio", "trust_region")])
def test_empty_batch_gives_absent_metrics_not_zeros(name):
    st = {k: (v[:0] if v.dim() else v) for k, v in full_stats().items()}
    assert PREDICTORS.get(name)(st) == {}


def test_unknown_predictor_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="tabular_sgd"):
        PREDICTORS.get("tabular_sdg")

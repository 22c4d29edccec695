"""probes/glossary.py: the glossary table equals docs/metrics.md, and it decides which names are known."""
from __future__ import annotations

from pathlib import Path

from solidrl.probes import glossary as G

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_is_the_glossarys_first_column():
    """A key added to docs/metrics.md (or to the table) without the other fails here."""
    docs = G.names_in_markdown((ROOT / "docs" / "metrics.md").read_text())
    assert sorted(set(docs) - set(G.NAMES)) == [], "in docs/metrics.md, not in probes/glossary.py NAMES"
    assert sorted(set(G.NAMES) - set(docs)) == [], "in probes/glossary.py NAMES, not in docs/metrics.md"
    assert len(G.NAMES) == len(set(G.NAMES))


def test_markdown_shorthand_is_expanded():
    text = "| `kl/ref_k1`, `_k2`, `_k3` | x |\n| `a/b` | `not/a_name` |\nprose `c/d`\n"
    assert G.names_in_markdown(text) == ["kl/ref_k1", "kl/ref_k2", "kl/ref_k3", "a/b"]


def test_placeholders_match_one_segment_and_metric_any():
    known = ["entropy/delta", "grad/norm_layer0", "grad/norm_layer11", "reward/pass@4", "loss/pg",
             "loss_audit/entropy_bonus/cos", "pred/jvp/kl/step", "pred/grpo_gradnorm_ratio/grad/norm_ratio_vs_rloo"]
    unknown = ["entropy/nonexistent", "grad/norm_layer", "loss/pg/extra", "loss_audit/a/b/cos", "pred/jvp",
               "kl/stepp", "entropy"]
    assert [m for m in known if not G.is_known(m)] == []
    assert [m for m in unknown if G.is_known(m)] == []


def test_close_matches_come_from_the_table():
    assert G.close_matches("entropy/tokem_mean")[0] == "entropy/token_mean"
    assert G.close_matches("kl/stepp")[0] == "kl/step"
    assert G.close_matches("zzzz/qqqq") == []


def test_a_hypothesis_with_an_unknown_metric_is_refused_when_parsed():
    """probe-check's parser checks `metric` and `observed` against the table (a predictor's `output`
    is the predictor's name for it: hypotheses/01 reads grad/norm_ratio_vs_rloo, not a row key)."""
    import pytest

    from solidrl.probes.check import hypothesis as H

    text = (ROOT / "hypotheses" / "01_grpo_std_normalization.toml").read_text()
    assert 'output = "grad/norm_ratio_vs_rloo"' in text and not G.is_known("grad/norm_ratio_vs_rloo")
    H.parse(text, "01.toml")  # the shipped file parses
    bad = text.replace('metric = "grad/norm"', 'metric = "grad/nrom"', 1)
    with pytest.raises(H.HypothesisError) as e:
        H.parse(bad, "01.toml")
    msg = str(e.value)
    assert "\n" not in msg and "unknown metric 'grad/nrom'" in msg and "close matches: grad/norm" in msg
    traj = (ROOT / "hypotheses" / "02_entropy_covariance.toml").read_text()
    assert 'observed = "entropy/token_mean"' in traj
    with pytest.raises(H.HypothesisError, match=r"observed': unknown metric 'entropy/token_men'"):
        H.parse(traj.replace('observed = "entropy/token_mean"', 'observed = "entropy/token_men"'), "02.toml")

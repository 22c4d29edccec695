"""The metric glossary as a table: every name docs/metrics.md defines, for checks at run time.

docs/metrics.md is the glossary (one line per key: meaning, formula, reduction, when logged); this
module is its first column, so that probe-check can refuse an unknown metric when it parses a
hypothesis file (probes/check/hypothesis.py), before any cold start, without reading docs/ (which an
installed package does not carry). tests/test_docs_metrics.py keeps NAMES equal to the names
`names_in_markdown` reads from docs/metrics.md: a new metric goes into both.

Placeholders: `{i}`, `{k}` and `<part>` match one name segment (text without '/'); the `<metric>` of
`pred/<predictor>/<metric>` matches any text, slashes included (a predictor's output is named after
the metric it predicts).
"""
from __future__ import annotations

import difflib
import re
from functools import lru_cache

__all__ = ["NAMES", "is_known", "close_matches", "names_in_markdown", "pattern"]

NAMES: tuple[str, ...] = (
    "step", "reward/mean", "reward/accuracy", "response/length_mean", "response/truncated_frac", "loss",
    "loss/<part>", "grad/norm", "lr", "time/rollout_s", "time/update_s", "time/step_s", "entropy/token_mean",
    "entropy/seq_mean", "entropy/sampled_token_mean", "entropy/sampled_seq_mean", "entropy/delta",
    "entropy/new_token_mean", "kl/step", "kl/step_reverse", "kl/step_k1", "kl/step_k2", "kl/step_k3",
    "kl/ref_exact", "kl/ref_exact_reverse", "kl/ref_k1", "kl/ref_k2", "kl/ref_k3", "grad/norm_embed",
    "grad/norm_layer{i}", "grad/norm_head", "grad/norm_other", "update/norm", "update/rel_norm",
    "update/norm_over_lr", "update/rms_over_lr", "ratio/mean", "ratio/min", "ratio/max", "ratio/log_std",
    "ratio/clip_frac_low", "ratio/clip_frac_high", "ratio/clip_frac", "ratio/dual_clip_frac",
    "mismatch/logp_abs_mean", "mismatch/logp_abs_max", "mismatch/kl_k1", "mismatch/kl_k3", "mismatch/kl_exact",
    "reward/std", "reward/pass@{k}", "response/length_max", "adv/mean", "adv/std", "adv/abs_mean",
    "adv/zero_frac", "cov/logp_adv", "cov/top20_entropy_weight_frac", "pred/<predictor>/<metric>",
    "time/probes_s", "loss_audit/<term>/rel_err", "loss_audit/<term>/cos", "loss_audit/<term>/grad_norm",
    "loss_audit/<term>/grad_norm_pred", "loss_audit/<term>/param_grad_norm", "loss_audit/total/param_rel_err",
    "loss_audit/reward_terms/abs_err_max", "consistency/logp_abs_max", "adv/zero_frac_all_correct",
    "adv/zero_frac_all_wrong", "adv/zero_frac_truncated", "response/length_correct_mean",
    "response/length_wrong_mean", "mismatch/sampler_logp_offset_mean", "mismatch/sampler_logp_offset_std",
    "rollout_ratio/log_mean", "rollout_ratio/log_var", "rollout_ratio/mean", "rollout_ratio/var",
    "rollout_ratio/min", "rollout_ratio/max", "rollout_ratio/clip_frac", "correction/touched_frac",
    "correction/weight_mean", "correction/weight_var", "correction/weight_max", "offpolicy/version_lag_mean",
    "offpolicy/version_lag_max", "mismatch/fresh_logp_abs_max", "pred/clip_frac/rollout_ratio/clip_frac",
    "pred/ratio_decomposition/rollout_ratio/log_var",
    "pred/ratio_decomposition_coherent/rollout_ratio/log_var", "collapse/kind", "collapse/reason",
    "controller/kl_coef", "controller/entropy_coef", "trust_region/scale", "trust_region/kl_pred",
    "trust_region/iters",
)


def names_in_markdown(text: str) -> list[str]:
    """Names in a glossary table's first column, in order, shorthand expanded: `kl/ref_k1`, `_k2` -> kl/ref_k2."""
    names = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        base = None
        for cell in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if cell.startswith("_") and base:
                names.append(base.rsplit("_", 1)[0] + cell)
            else:
                base = cell
                names.append(cell)
    return list(dict.fromkeys(names))


def pattern(name: str) -> re.Pattern:
    """The regex a glossary name stands for (see the module docstring for the placeholders)."""
    parts = re.split(r"(<[^>]+>|\{[^}]+\})", name)
    out = []
    for i, x in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(x))
        else:
            out.append(".+" if x == "<metric>" else "[^/]+")
    return re.compile("".join(out) + "$")


@lru_cache(maxsize=None)
def _patterns() -> tuple[re.Pattern, ...]:
    return tuple(pattern(n) for n in NAMES)


def is_known(metric: str) -> bool:
    """True when the glossary defines `metric` (exactly, or through a placeholder)."""
    return any(p.match(metric) for p in _patterns())


def close_matches(metric: str, n: int = 3) -> list[str]:
    """Up to n glossary names closest to `metric` (difflib's ratio, cutoff 0.6), best first."""
    return difflib.get_close_matches(metric, NAMES, n=n, cutoff=0.6)

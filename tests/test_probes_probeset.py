"""probes/probeset.py: one assembly of the probe set, by probes.groups, for every command.

Claims: the default ('all') attaches what `solidrl train` attached before the probe set had one home
(recorder, offpolicy, loss audit, consistency, diagnostics, in that order) and gives the same rows; a
group alone writes only the keys of its section of docs/metrics.md (plus the loop's), so that
`--set probes.groups=entropy,grad` runs no other probe's forward; probes.enabled = false attaches
nothing; the TRL callback's groups are the recorder's; the full set leaves training bit for bit as
a bare run's (slow).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import read_rows, strip_time, tiny_overrides

from solidrl.probes import consistency, diagnostics, glossary, loss_audit, offpolicy, recorder
from solidrl.probes.probeset import attach_probes, trl_groups
from solidrl.probes.recorder import GROUPS, RECORDER_GROUPS
from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**over):
    return apply_overrides(TrainConfig(), tiny_overrides(**{"probes.audit_every": 1, **over}))


def _sections() -> dict[str, list[re.Pattern]]:
    """docs/metrics.md's '## <name> ...' sections -> the patterns of the names each defines."""
    out: dict[str, list[re.Pattern]] = {}
    text = (ROOT / "docs" / "metrics.md").read_text()
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        head = block.split()[0].lower()
        out[head] = [glossary.pattern(n) for n in glossary.names_in_markdown(block)]
    return out


def test_every_group_has_a_section_of_the_glossary():
    assert set(GROUPS) <= set(_sections())


def test_all_attaches_the_train_set_in_order_and_gives_its_rows(tmp_path, solidrl_cache):
    """'all' = recorder, offpolicy (after the recorder: it reuses kl/step), loss audit, consistency,
    diagnostics; the rows equal those of the probes attached one by one in that order."""
    cfg = _cfg(**{"run.steps": 1})
    t = Trainer(cfg, tmp_path / "set", progress=False)
    assert attach_probes(t).names() == ["recorder", "offpolicy", "loss_terms", "consistency", "diagnostics"]
    t.run()
    u = Trainer(cfg, tmp_path / "by_hand", progress=False)
    recorder.attach(u)
    offpolicy.attach(u)
    loss_audit.attach(u)
    consistency.attach(u)
    diagnostics.attach(u)
    u.run()
    a, b = read_rows(tmp_path / "set"), read_rows(tmp_path / "by_hand")
    assert [list(r) for r in a] == [list(r) for r in b]  # same keys in the same order
    assert strip_time(a) == strip_time(b)
    keys = set(a[0])
    assert {"loss_audit/pg/rel_err", "consistency/logp_abs_max", "rollout_ratio/log_var",
            "adv/zero_frac_all_wrong", "entropy/delta", "kl/ref_exact"} <= keys


@pytest.mark.slow
@pytest.mark.parametrize("group", list(GROUPS))
def test_a_group_alone_writes_only_its_sections_keys(group, tmp_path, solidrl_cache):
    sec = _sections()
    allowed = sec["loop"] + sec["collapse"] + sec[group]
    if group in RECORDER_GROUPS:
        allowed += sec["time"]  # time/probes_s: the recorder's own time
    cfg = _cfg(**{"run.steps": 1, "probes.groups": group, "probes.save_stats": False, "probes.jvp_every": 1})
    t = Trainer(cfg, tmp_path, progress=False)
    ps = attach_probes(t)
    assert (ps.recorder is not None) == (group in RECORDER_GROUPS)
    t.run()
    keys = {k for r in read_rows(tmp_path) for k in r}
    stray = sorted(k for k in keys if not any(p.match(k) for p in allowed))
    assert not stray, f"group {group!r} wrote keys of other sections: {stray}"
    own = [k for k in keys if any(p.match(k) for p in sec[group])]
    assert own, f"group {group!r} wrote none of its keys"


def test_entropy_and_grad_attach_the_recorder_only(tmp_path, solidrl_cache):
    """The README's `--set probes.groups=entropy,grad`: no off-policy probe and so no extra forward."""
    t = Trainer(_cfg(**{"run.steps": 1, "probes.groups": "entropy,grad", "probes.save_stats": False}),
                tmp_path, progress=False)
    assert attach_probes(t).names() == ["recorder"]
    t.run()
    keys = set(read_rows(tmp_path)[0])
    assert "entropy/token_mean" in keys and "grad/norm_embed" in keys
    assert not {k for k in keys if k.startswith(("rollout_ratio/", "kl/", "loss_audit/", "consistency/"))}


def test_disabled_attaches_nothing_and_a_bad_group_is_refused(tmp_path, solidrl_cache):
    t = Trainer(_cfg(**{"probes.enabled": False}), tmp_path, progress=False)
    assert attach_probes(t).names() == []
    assert not any(t.hooks.values())  # no hook at any point
    with pytest.raises(ConfigError, match="unknown probe group 'entropie'; known: all, entropy"):
        attach_probes(Trainer(_cfg(**{"probes.groups": "entropy,entropie"}), tmp_path / "b", progress=False))


def test_trl_groups_are_the_recorders():
    assert trl_groups("all") == RECORDER_GROUPS
    assert trl_groups("entropy, grad") == {"entropy", "grad"}
    with pytest.raises(ConfigError, match="group 'offpolicy' runs on solidrl's trainer only"):
        trl_groups("entropy,offpolicy")


@pytest.mark.slow  # ~10 s unloaded, ~47 s measured on the shared 2-core machine
def test_the_full_set_does_not_change_training(tmp_path, solidrl_cache):
    """Every probe `solidrl train` attaches, the loss audit's extra autograd and the JVP's weight swap
    included (audit and JVP on every step), leaves the trajectory bit for bit that of a bare run."""
    over = {"run.steps": 2, "probes.jvp_every": 1}
    bare = Trainer(_cfg(**over, **{"probes.enabled": False}), tmp_path / "bare", progress=False)
    assert attach_probes(bare).names() == []
    bare.run()
    full = Trainer(_cfg(**over), tmp_path / "full", progress=False)
    assert len(attach_probes(full).names()) == 5
    full.run()
    a, b = strip_time(read_rows(tmp_path / "bare")), strip_time(read_rows(tmp_path / "full"))
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert {k: rb[k] for k in ra} == ra  # every loop key, exactly
    assert "pred/jvp/kl/step" in b[1] and "loss_audit/pg/rel_err" in b[1]

"""The probe set a run gets, assembled in one place from cfg.probes (docs/architecture.md, "Probe sets").

Every command that trains with probes calls `attach_probes(trainer)`: `solidrl train`, probe-check's
runs and its shadow trainer, the ladder, the transfer table, bench/probe_overhead.py. What is attached
follows `probes.enabled` and `probes.groups` (recorder.GROUPS; 'all' by default), in this order:

  recorder     when a group of recorder.RECORDER_GROUPS is on, or probes.save_stats (the stats file)
  offpolicy    group `offpolicy`; after the recorder: it reuses the recorder's kl/step (its own
               forward only when the recorder wrote none)
  loss_terms   group `loss_terms` (probes/loss_audit.py), every probes.audit_every steps (0 = off)
  consistency  group `consistency`, every probes.audit_every steps (0 = off); these two feed the
               `solidrl audit` checklist's items of the same names, hence the schedule's name
  diagnostics  group `diagnostics`, every probes.every steps

A probe that is not attached costs nothing: it adds no hook. A command that needs a subset says so
through probes.groups (the ladder and the transfer table set it in their overrides), never by
attaching probes itself. The TRL callback drives only the recorder (`trl_groups` refuses the rest).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from solidrl.trainer.config import ConfigError

from . import consistency, diagnostics, loss_audit, offpolicy, recorder
from .recorder import GROUPS, RECORDER_GROUPS, parse_groups

__all__ = ["ProbeSet", "attach_probes", "trl_groups"]


@dataclass
class ProbeSet:
    """The probes attached to one trainer (None: not attached)."""

    recorder: Optional[recorder.Recorder] = None
    offpolicy: Optional[offpolicy.OffPolicyProbe] = None
    loss_terms: Optional[loss_audit.LossTermsProbe] = None
    consistency: Optional[consistency.ConsistencyProbe] = None
    diagnostics: Optional[diagnostics.Diagnostics] = None

    def names(self) -> list[str]:
        """The attached probes, in attachment order."""
        return [n for n in ("recorder", "offpolicy", "loss_terms", "consistency", "diagnostics")
                if getattr(self, n) is not None]


def attach_probes(t) -> ProbeSet:
    """Attach the probes t.cfg.probes asks for (see the module docstring); returns what was attached."""
    p = t.cfg.probes
    out = ProbeSet()
    if not p.enabled:
        return out
    g = parse_groups(p.groups)
    if g & RECORDER_GROUPS or p.save_stats:
        out.recorder = recorder.attach(t)
    if "offpolicy" in g:
        out.offpolicy = offpolicy.attach(t)  # after the recorder: it reuses the recorder's kl/step
    if p.audit_every > 0:
        if "loss_terms" in g:
            out.loss_terms = loss_audit.attach(t)
        if "consistency" in g:
            out.consistency = consistency.attach(t)
    if "diagnostics" in g:
        out.diagnostics = diagnostics.attach(t)
    return out


def trl_groups(spec: str) -> frozenset[str]:
    """The groups the TRL callback runs: the recorder's only ('all' = RECORDER_GROUPS). Naming a group of
    another probe is a ConfigError: those probes hook solidrl's own trainer, which a TRL run does not have."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return RECORDER_GROUPS
    g = parse_groups(spec)
    other = sorted(g - RECORDER_GROUPS)
    if other:
        raise ConfigError(f"probes.groups: group {other[0]!r} runs on solidrl's trainer only; the TRL callback "
                          f"runs the recorder's groups: {', '.join(n for n in GROUPS if n in RECORDER_GROUPS)}")
    return g

"""The probe set a run gets, assembled in one place (docs/architecture.md, "Probe sets").

`attach_probes(trainer)` attaches every probe `solidrl train` runs: the recorder, the off-policy
probe (after the recorder: it reuses kl/step), the diagnostics, and every probes.audit_every steps
the loss-term audit and the consistency check.
"""
from __future__ import annotations

from . import consistency, diagnostics, loss_audit, offpolicy, recorder

__all__ = ["attach_probes"]


def attach_probes(t) -> None:
    """Every probe `solidrl train` runs (see the module docstring)."""
    recorder.attach(t)
    offpolicy.attach(t)  # after the recorder: it reuses the recorder's kl/step
    if t.cfg.probes.audit_every > 0:
        loss_audit.attach(t)
        consistency.attach(t)
    diagnostics.attach(t)

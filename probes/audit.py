"""The perfect-baseline audit (`solidrl audit RUN_DIR`, probes/commands/audit.py): a run against the perfect-baseline checklist, pass/fail with the measured value.

  item             passes when                                                            read from
  on_policy        the loss's ratio pi / pi_old is exactly 1 on every step (max |r - 1| = 0)  ratio/min, ratio/max;
                   and one optimizer update per rollout batch                                config
  mismatch         max |log pi_train(a) - log pi_rollout(a)| <= 1e-3 nats on tokens the      mismatch/fresh_logp_abs_max
                   current weights sampled (numerics only; staleness is its own item)        (else mismatch/logp_abs_max)
  truncation       mean response/truncated_frac < 1%                                          rows
  grader           the task's grader is right on 100% of its check set: every reference      the task (recomputed)
                   solution accepted, every corrupted answer (last number + 1; empty) refused
  no_regularizers  algo.kl_coef = algo.entropy_coef = optim.grad_clip = 0, and no loss/kl or  config, rows
                   loss/entropy_bonus in the rows, and no step controller's coefficient
                   (controller/*) above 0 in them
  no_staleness     offpolicy.staleness = 0, offpolicy.partial_versions = 1, and every token's  config,
                   lag is 0                                                                   offpolicy/version_lag_max
  loss_terms       every loss term's logit gradient matches its formula (rel_err <= 1e-3)   loss_audit/*
                   and the terms sum to the trainer's parameter gradient (probes/loss_audit.py)
  consistency      log-probs of one batch agree under every micro-batch split and padding  consistency/logp_abs_max
                   (<= 1e-4 nats: float32 summation order)

A measured value beats the config where both exist; an item whose metric is absent from the rows
says so and is judged on the config alone ("config only"). An item that can be judged neither way is
"n/a" and does not fail the audit. `audit_run(run_dir) -> AuditResult` is the API probe-check calls
on a hypothesis's baseline arm.

Left out: whether the task's answers are unique (a property of the task's design, tested in
tests/test_trainer_tasks.py), and sampling settings (temperature, top-k/p), which show up as mismatch.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from solidrl.trainer.config import ConfigError, TrainConfig, config_from_dict

from .loss_audit import CONSISTENCY_TOL, REL_TOL, SAMPLER_OFFSET_TOL
from .rundir import read_rows

__all__ = ["AuditItem", "AuditResult", "audit_run", "audit_arm", "grader_accuracy", "MISMATCH_MAX",
           "TRUNCATION_MAX"]

MISMATCH_MAX = 1e-3
"""nats. float32 sampling with a KV cache vs the trainer's full forward differs by ~3e-5 at most on the
nano model (measured); a bfloat16 sampler by ~0.08-0.3, float16 by ~0.01-0.05."""
TRUNCATION_MAX = 0.01
GRADER_MIN = 1.0


@dataclass
class AuditItem:
    name: str
    passed: Optional[bool]   # None: could not be judged (n/a)
    measured: str            # the value, as printed
    required: str
    source: str              # "measured", "config", "measured+config" or "n/a"


@dataclass
class AuditResult:
    run_dir: str
    items: list[AuditItem] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[str]:
        return [i.name for i in self.items if i.passed is False]

    def item(self, name: str) -> AuditItem:
        return next(i for i in self.items if i.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "passed": self.passed, "failed": self.failed,
                "items": [asdict(i) for i in self.items]}

    def format(self) -> str:
        head = f"audit {self.run_dir}: " + ("PASS" if self.passed else f"FAIL ({', '.join(self.failed)})")
        w = max(len(i.measured) for i in self.items) if self.items else 8
        lines = [head, f"  {'item':16s} {'result':6s} {'measured':{w}s}  required"]
        for i in self.items:
            res = {True: "pass", False: "FAIL", None: "n/a"}[i.passed]
            lines.append(f"  {i.name:16s} {res:6s} {i.measured:{w}s}  {i.required} [{i.source}]")
        return "\n".join(lines)


def _values(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def grader_accuracy(task_name: str) -> tuple[int, int]:
    """(right, cases) of the task's grader on its check set: reference solutions must grade 1,
    corrupted ones 0 (the last number of the solution + 1, and the empty response)."""
    import re

    from solidrl.trainer.tasks import get_task

    task = get_task(task_name)
    right = total = 0
    for p in task.check_set():
        cases = [(p.solution, 1.0), ("", 0.0)]
        nums = list(re.finditer(r"-?\d+", p.solution))
        if nums:
            m = nums[-1]
            cases.append((p.solution[:m.start()] + str(int(m.group()) + 1) + p.solution[m.end():], 0.0))
        for text, want in cases:
            right += task.grade(p, text) == want
            total += 1
    return right, total


def _on_policy(cfg: TrainConfig, rows: list[dict]) -> AuditItem:
    req = "exactly 1 (max |r - 1| = 0), 1 update per rollout batch"
    ups = cfg.updates_per_step
    lo, hi = _values(rows, "ratio/min"), _values(rows, "ratio/max")
    if lo and hi:
        dev = max(max(abs(x - 1) for x in lo), max(abs(x - 1) for x in hi))
        return AuditItem("on_policy", dev == 0.0 and ups == 1,
                         f"max|r-1| = {dev:.3g} over {len(lo)} steps; {ups} update(s)/step", req, "measured+config")
    return AuditItem("on_policy", ups == 1, f"no ratio/* in the rows; {ups} update(s)/step (config only)", req, "config")


def _mismatch(cfg: TrainConfig, rows: list[dict], limit: float) -> AuditItem:
    req = f"max |dlogp| <= {limit:g} nats"
    for key in ("mismatch/fresh_logp_abs_max", "mismatch/logp_abs_max"):
        v = _values(rows, key)
        if v:
            m = max(v)
            return AuditItem("mismatch", m <= limit, f"{key} = {m:.3g}", req, "measured")
    o, r = cfg.offpolicy, cfg.rollout
    same = (o.rollout_dtype == "float32" and o.logit_noise == 0 and r.temperature == 1.0 and r.top_k == 0
            and r.top_p == 1.0)
    what = (f"rollout_dtype={o.rollout_dtype}, logit_noise={o.logit_noise}, T={r.temperature}, "
            f"top_k={r.top_k}, top_p={r.top_p} (config only)")
    return AuditItem("mismatch", same, what, req, "config")


def _truncation(rows: list[dict], limit: float) -> AuditItem:
    req = f"mean < {limit:.0%}"
    v = _values(rows, "response/truncated_frac")
    if not v:
        return AuditItem("truncation", None, "no response/truncated_frac in the rows", req, "n/a")
    mean = sum(v) / len(v)
    return AuditItem("truncation", mean < limit, f"mean {mean:.2%}, max {max(v):.2%} over {len(v)} steps", req,
                     "measured")


def _grader(cfg: TrainConfig) -> AuditItem:
    req = f"accuracy >= {GRADER_MIN:.0%} on the check set"
    try:
        right, n = grader_accuracy(cfg.task.name)
    except Exception as e:  # noqa: BLE001 - an unknown or broken task is an audit finding, not a crash
        return AuditItem("grader", False, f"cannot grade: {type(e).__name__}: {e}", req, "measured")
    return AuditItem("grader", n > 0 and right / n >= GRADER_MIN, f"{right}/{n} cases right ({cfg.task.name})",
                     req, "measured")


def _no_regularizers(cfg: TrainConfig, rows: list[dict]) -> AuditItem:
    """Regularizers from the config, and from the rows: the loss parts logged and the coefficients a step
    controller set (`controller/<algo field>`; the config holds only a controlled coefficient's start)."""
    a, o = cfg.algo, cfg.optim
    peak: dict[str, float] = {}  # algo field -> the largest value a controller gave it in the rows
    for r in rows:
        for k, v in r.items():
            if k.startswith("controller/"):
                peak[k[len("controller/"):]] = max(peak.get(k[len("controller/"):], 0.0), v)
    on = [f"{k}={v}" for k, v in (("algo.kl_coef", a.kl_coef), ("algo.entropy_coef", a.entropy_coef),
                                  ("optim.grad_clip", o.grad_clip)) if v != 0 and k[len("algo."):] not in peak]
    on += [f"algo.{k} up to {v:g} (controller {a.controller})" for k, v in peak.items() if v != 0]
    logged = sorted({k for r in rows for k in ("loss/kl", "loss/entropy_bonus") if k in r})
    what = ", ".join(on + [f"{k} logged" for k in logged]) or "kl_coef = entropy_coef = grad_clip = 0"
    return AuditItem("no_regularizers", not on and not logged, what, "no KL loss, entropy bonus or grad clipping",
                     "measured+config")


def _no_staleness(cfg: TrainConfig, rows: list[dict]) -> AuditItem:
    o = cfg.offpolicy
    req = "staleness 0, partial_versions 1, every token's lag 0"
    conf = f"staleness={o.staleness}, partial_versions={o.partial_versions}"
    lag = _values(rows, "offpolicy/version_lag_max")
    ok = o.staleness == 0 and o.partial_versions == 1
    if lag:
        return AuditItem("no_staleness", ok and max(lag) == 0, f"{conf}; max lag {max(lag):g} update(s)", req,
                         "measured+config")
    return AuditItem("no_staleness", ok, f"{conf} (config only)", req, "config")


def audit_run(run_dir: str | Path, mismatch_max: float = MISMATCH_MAX,
              truncation_max: float = TRUNCATION_MAX) -> AuditResult:
    """Audit one run directory (config.json, metrics.jsonl) against the perfect-baseline checklist.

    Raises FileNotFoundError when run_dir has no config.json, ConfigError when it does not parse.
    """
    d = Path(run_dir)
    cfg_path = d / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{d} is not a run directory (no config.json)")
    try:
        cfg = config_from_dict(json.loads(cfg_path.read_text()))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path}: not valid JSON ({e})") from None
    rows = read_rows(d)
    return AuditResult(str(d), [
        _on_policy(cfg, rows), _mismatch(cfg, rows, mismatch_max), _truncation(rows, truncation_max),
        _grader(cfg), _no_regularizers(cfg, rows), _no_staleness(cfg, rows),
        *_loss_audit_items(cfg, rows)])  # loss_terms, consistency (probes/loss_audit.py)


def _loss_verdict(rel: float, cos: Optional[float], norm: float, norm_pred: float) -> str:
    if norm == 0 and norm_pred > 0:
        return "zero contribution"
    if cos is not None and cos < 0:
        return "wrong sign"
    if norm_pred == 0 and norm > 0:
        return "nonzero where the formula gives 0"
    if cos is not None and cos < 1 - REL_TOL:
        return "wrong direction"
    return "wrong magnitude"


def _loss_audit_items(cfg, rows: list[dict], rel_tol: float = REL_TOL,
                      consistency_tol: float = CONSISTENCY_TOL) -> list[AuditItem]:
    """The `loss_terms`, `consistency` and `sampler_offset` items from the rows probes/loss_audit.py and
    probes/consistency.py write."""
    items = []
    terms = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("loss_audit/") and k.endswith("/rel_err")})
    req = f"every term's logit gradient within rel_err {rel_tol:g} of its formula"
    if not terms:
        items.append(AuditItem("loss_terms", None, "no loss_audit/* in the rows", req, "n/a"))
    else:
        parts, bad = [], []
        for term in terms:
            worst = max((r for r in rows if f"loss_audit/{term}/rel_err" in r),
                        key=lambda r: r[f"loss_audit/{term}/rel_err"])
            g = lambda k: worst.get(f"loss_audit/{term}/{k}")  # noqa: E731
            rel = g("rel_err")
            desc = f"{term}: rel_err {rel:.2g}, |g| {g('grad_norm'):.3g} vs {g('grad_norm_pred'):.3g} pred"
            if rel > rel_tol:
                v = _loss_verdict(rel, g("cos"), g("grad_norm"), g("grad_norm_pred"))
                desc += f" ({v}, step {worst['step']})"
                bad.append(term)
            parts.append(desc)
        tot = [r["loss_audit/total/param_rel_err"] for r in rows if "loss_audit/total/param_rel_err" in r]
        if tot:
            parts.append(f"sum of terms vs grad_theta L: rel_err {max(tot):.2g}")
            if max(tot) > rel_tol:
                bad.append("total")
        rew = [r["loss_audit/reward_terms/abs_err_max"] for r in rows if "loss_audit/reward_terms/abs_err_max" in r]
        if rew:
            parts.append(f"reward terms: max |err| {max(rew):.2g}")
            if max(rew) > rel_tol:
                bad.append("reward_terms")
        measured = "; ".join(parts) + (f" -- FAILED: {', '.join(bad)}" if bad else "")
        items.append(AuditItem("loss_terms", not bad, measured, req, "measured"))
    creq = f"max |dlogp| <= {consistency_tol:g} nats across micro-batch splits and paddings (float32 summation order)"
    c = [r["consistency/logp_abs_max"] for r in rows if "consistency/logp_abs_max" in r]
    if c:
        items.append(AuditItem("consistency", max(c) <= consistency_tol,
                               f"consistency/logp_abs_max = {max(c):.3g} over {len(c)} steps", creq, "measured"))
    else:
        items.append(AuditItem("consistency", None, "no consistency/logp_abs_max in the rows", creq, "n/a"))
    off = [r["mismatch/sampler_logp_offset_mean"] for r in rows if "mismatch/sampler_logp_offset_mean" in r]
    if off:  # only where the sampler processes the logits (temperature, top-k, top-p)
        worst = max(off, key=abs)
        items.append(AuditItem(
            "sampler_offset", abs(worst) <= SAMPLER_OFFSET_TOL,
            f"mean log q(a) - log pi(a) = {worst:.3g} nats (every rollout ratio biased by exp({-worst:.3g}))",
            f"|offset| <= {SAMPLER_OFFSET_TOL:g}: the sampler's log-probs are the policy's, not of a truncated or "
            "tempered distribution (TRL #6789)", "measured"))
    return items


def audit_arm(out: str | Path, runs: list[dict], arm: str) -> dict[str, Any]:
    """Audit every run of `arm` in a probe-check record (runs: plan.json's "runs", dirs relative to out).

    Returns {"arm", "runs": {dir: AuditResult.to_dict()}, "failed": the item names any run failed, "note":
    a one-line warning for the report when some item failed, else None}. Runs without a directory are skipped.
    """
    res = {r["dir"]: audit_run(Path(out) / r["dir"]).to_dict() for r in runs
           if r["arm"] == arm and (Path(out) / r["dir"] / "config.json").exists()}
    failed = sorted({n for a in res.values() for n in a["failed"]})
    detail = "; ".join(f"{i['name']}: {i['measured']}" for a in res.values() for i in a["items"]
                       if i["passed"] is False and i["name"] in failed)
    note = (f"baseline arm {arm!r} fails the perfect-baseline audit ({', '.join(failed)}): {detail}"
            if failed else None)
    return {"arm": arm, "runs": res, "failed": failed, "note": note}

"""Metric logs of runs made elsewhere -> solidrl-named rows (probe-check's `--from-log` reads them:
probes/check/from_log.py).

    probe-check HYP.toml --from-log baseline=runs/a/trainer_state.json treatment=runs/b/trainer_state.json
    probe-check HYP.toml --from-log baseline@0=a0.jsonl baseline@1=a1.jsonl treatment@0=b0.jsonl ...

Formats (detected from the content, never from the file name):
  trl      transformers `TrainerState` JSON (`<out>/trainer_state.json`, `<out>/checkpoint-N/trainer_state.json`):
           `{"log_history": [{"step": N, "loss": ..., ...}, ...]}`; N counts optimizer steps from 1, a value is
           the mean over the `logging_steps` steps since the previous entry; `eval_*` and the final
           `train_runtime` entry are skipped.
  verl     verl's FileLogger JSONL (`verl/utils/tracking.py`): one `{"step": N, "data": {...}}` per line, N from
           1 (step 0 is the validation before training), NaN/Inf written as null.
  solidrl  solidrl's own metrics.jsonl (flat rows with a 0-based "step"), e.g. from a TRL run with
           solidrl's callback (probes/integrations/trl_callback.py); names pass through unchanged.

NAME_MAP is the one table from engine names to solidrl's (docs/scaling.md prints it; a test keeps the
two equal). A key already in solidrl's form in a log (the TRL callback merges its rows into TRL's
log) wins over a mapped one. `exact = False` marks a mapping that measures a near but not identical
quantity; every verdict that reads one carries a note saying how it differs.

What can be judged from a log: A/B predictions, and trajectory predictions when the log carries the
predictor's `pred/...` key (only a TRL run with solidrl's callback has it). Per-step predictions need
solidrl's per-step statistics: judged from a solidrl metrics.jsonl with one row per step (the callback's),
else reported as not judgeable (verdict inconclusive, with the reason), as counterfactual predictions
always are (they need solidrl's shadow step). A metric a prediction reads that the log does not
provide is a one-line error (exit 2), as is an unknown format.

Left out on purpose: OpenRLHF (no file logger: console lines and wandb only), and checking the
external runs' settings against the hypothesis's arms (a log does not record them).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from solidrl.probes.errors import InputError

FORMATS = ("trl", "verl", "solidrl")


@dataclass(frozen=True)
class Name:
    """One engine key and the solidrl metric it becomes."""

    engine: str
    source: str
    target: str
    exact: bool
    meaning: str


def _n(engine, source, target, exact, meaning):
    return Name(engine, source, target, exact, meaning)


# Sources: NOTES-peer-metrics.md (read from TRL @ f2cd5771 and verl @ b178a3cd) and TRL 1.16's grpo_trainer.py.
NAME_MAP: tuple[Name, ...] = (
    _n("trl", "reward", "reward/mean", True, "mean over the batch of the weighted sum of the reward functions"),
    _n("trl", "rewards/accuracy/mean", "reward/accuracy", True,
       "mean of the reward function named `accuracy` (0/1 grader; TRL >= 0.17)"),
    _n("trl", "rewards/accuracy", "reward/accuracy", True, "the same, TRL <= 0.16"),
    _n("trl", "completions/mean_length", "response/length_mean", True, "completion tokens up to and including EOS"),
    _n("trl", "completion_length", "response/length_mean", True, "the same, TRL <= 0.16"),
    _n("trl", "completions/max_length", "response/length_max", True, "longest completion in the batch"),
    _n("trl", "completions/clipped_ratio", "response/truncated_frac", True, "fraction of completions without EOS"),
    _n("trl", "entropy", "entropy/token_mean", True,
       "token mean of the exact entropy of the policy at the loss forward (pi_old when on-policy); TRL >= 0.20"),
    _n("trl", "kl", "kl/ref_k3", True, "token mean of k3 to the reference; logged only when beta != 0"),
    _n("trl", "clip_ratio/low_mean", "ratio/clip_frac_low", True, "r < 1 - eps_low and A < 0"),
    _n("trl", "clip_ratio/high_mean", "ratio/clip_frac_high", True, "r > 1 + eps_high and A > 0"),
    _n("trl", "clip_ratio/region_mean", "ratio/clip_frac", True, "either clip binds"),
    _n("trl", "clip_ratio", "ratio/clip_frac", True, "the same, TRL <= 0.16"),
    _n("trl", "grad_norm", "grad/norm", True, "global gradient norm before clipping"),
    _n("trl", "frac_reward_zero_std", "adv/zero_frac", False,
       "fraction of groups with zero reward std; batch-level when scale_rewards='batch'"),
    _n("trl", "sampling/sampling_logp_difference/mean", "mismatch/logp_abs_mean", True,
       "abs(trainer logp - sampler logp) on the sampled tokens (vLLM only; TRL >= 0.23)"),
    _n("trl", "sampling/sampling_logp_difference/max", "mismatch/logp_abs_max", True, "the same, max"),
    _n("trl", "learning_rate", "lr", True, "learning rate of the step"),
    _n("trl", "loss", "loss", True, "the loss minimized at the step"),
    _n("verl", "critic/score/mean", "reward/mean", True,
       "mean sequence score before any KL-in-reward (= solidrl's reward/mean without in-reward KL)"),
    _n("verl", "response_length/mean", "response/length_mean", True, "mean response length in tokens"),
    _n("verl", "response_length/max", "response/length_max", True, "longest response"),
    _n("verl", "response_length/clip_ratio", "response/truncated_frac", False,
       "fraction at max_response_length (an EOS at the last position counts; reads 0 when max_model_len binds, verl #7823)"),
    _n("verl", "actor/entropy", "entropy/token_mean", False,
       "policy entropy aggregated by loss_agg_mode: equal only with loss_agg_mode = token-mean"),
    _n("verl", "actor/ppo_kl", "kl/step_k1", False,
       "masked mean of old_logp - logp at each mini-batch's forward, before its update (0 when fully on-policy "
       "with one mini-batch); solidrl's kl/step_k1 is measured after the step"),
    _n("verl", "actor/kl_loss", "kl/ref_k3", False,
       "k3 to the reference (low_var_kl), clamped to [-10, 10]; summed over mini-batches and epochs in some versions"),
    _n("verl", "actor/reward_kl_penalty", "kl/ref_k1", False,
       "k1 of pi_old to the reference, sequence mean of token means (solidrl: token mean)"),
    _n("verl", "actor/grad_norm", "grad/norm", True, "global gradient norm before clipping, mean over mini-batches"),
    _n("verl", "actor/pg_clipfrac", "ratio/clip_frac", False,
       "fraction of tokens where PPO's clipped branch is active (either side): a mean of per-micro-batch "
       "token means (solidrl pools the tokens of all updates); sequence-level for GSPO"),
    _n("verl", "actor/pg_clipfrac_lower", "ratio/dual_clip_frac", False,
       "dual-clip fraction, A < 0 and r > clip_ratio_c (not the low side of PPO's clip), per-micro-batch means"),
    _n("verl", "actor/pg_loss", "loss/pg", False, "policy-gradient loss, aggregated by loss_agg_mode"),
    _n("verl", "actor/lr", "lr", True, "learning rate of the step"),
)

_SOLIDRL_KEY = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_@.\-]+)+$")


def names_for(engine: str) -> tuple[Name, ...]:
    return tuple(n for n in NAME_MAP if n.engine == engine)


class LogError(InputError):
    """An unreadable or unknown log, or a metric it cannot provide; one line naming the file."""

    def __init__(self, file: str, msg: str):
        super().__init__(file, "", msg)


# ----------------------------------------------------------------------------------------------
# Reading


@dataclass
class Log:
    """One external run's metrics under solidrl's names: rows by 0-based step."""

    file: str
    format: str
    rows: dict[int, dict[str, float]]
    approx: dict[str, str]          # solidrl name -> engine key it came from, for inexact mappings
    every: int = 1                  # steps per log entry (TRL's logging_steps), inferred

    @property
    def steps(self) -> int:
        return max(self.rows) + 1 if self.rows else 0

    def names(self) -> list[str]:
        return sorted({k for r in self.rows.values() for k in r})


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def detect(path: Path) -> tuple[str, Any]:
    """(format, parsed content) of a log file; LogError if it is none of FORMATS."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LogError(str(path), f"cannot read the log ({type(e).__name__})") from None
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("log_history"), list):
            return "trl", doc
    lines = []
    for i, ln in enumerate(text.splitlines()):
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError:
            if i == len(text.splitlines()) - 1 and lines:
                break  # a run killed mid-write: keep the complete lines
            lines = None
            break
        if not isinstance(obj, dict):
            lines = None
            break
        lines.append(obj)
    if lines:
        if all(isinstance(o.get("data"), dict) and isinstance(o.get("step"), int) for o in lines):
            return "verl", lines
        if all(isinstance(o.get("step"), int) and "data" not in o for o in lines):
            return "solidrl", lines
    raise LogError(str(path), "unknown log format; known: TRL trainer_state.json (a JSON object with "
                              "'log_history'), verl FileLogger JSONL ({\"step\": N, \"data\": {...}} per line), "
                              "solidrl metrics.jsonl")


def _convert(raw: dict[str, Any], engine: str, approx: dict[str, str]) -> dict[str, float]:
    """One engine row -> solidrl names: keys already in solidrl's form first, then the table."""
    out: dict[str, float] = {}
    table = {n.source: n for n in names_for(engine)}
    for k, v in raw.items():
        x = _number(v)
        if x is not None and k not in table and _SOLIDRL_KEY.match(k) and not k.startswith("eval_"):
            out[k] = x
    for k, v in raw.items():
        n = table.get(k)
        x = _number(v)
        if n is None or x is None or n.target in out:
            continue
        out[n.target] = x
        if not n.exact:
            approx[n.target] = k
    return out


def read_log(path: str | Path) -> Log:
    """Read a TRL, verl or solidrl log into solidrl-named rows keyed by 0-based step."""
    p = Path(path)
    fmt, content = detect(p)
    rows: dict[int, dict[str, float]] = {}
    approx: dict[str, str] = {}
    steps: list[int] = []
    if fmt == "trl":
        for e in content["log_history"]:
            s = e.get("step")
            if not isinstance(s, int) or s < 1 or "train_runtime" in e:
                continue
            if not any(k in e for k in ("loss", "reward", "grad_norm")):
                continue  # an evaluation-only entry
            rows.setdefault(s - 1, {}).update(_convert(e, "trl", approx))
            steps.append(s)
    elif fmt == "verl":
        for e in content:
            s = e["step"]
            data = {k: v for k, v in e["data"].items() if not k.startswith("val-")}
            if s < 1 or not data:
                continue  # step 0: the validation before training
            rows.setdefault(s - 1, {}).update(_convert(data, "verl", approx))
            steps.append(s)
    else:
        for e in content:
            s = e["step"]
            if s < 0:
                continue
            rows.setdefault(s, {}).update({k: float(v) for k, v in e.items()
                                           if k != "step" and _number(v) is not None})
            steps.append(s + 1)
    if not rows:
        raise LogError(str(p), f"a {fmt} log with no training steps in it")
    gaps = {b - a for a, b in zip(sorted(set(steps)), sorted(set(steps))[1:])}
    every = min(gaps) if gaps else 1
    return Log(str(p), fmt, rows, approx, every)


def describe(n: Name) -> str:
    return f"{n.target} from {n.engine} {n.source!r} ({n.meaning})"


def table_markdown(engine: str) -> str:
    """The name table of one engine as markdown rows (docs/scaling.md holds these; a test compares)."""
    rows = ["| engine key | solidrl name | exact | what the engine logs |", "|---|---|---|---|"]
    for n in names_for(engine):
        rows.append(f"| `{n.source}` | `{n.target}` | {'yes' if n.exact else '≈'} | {n.meaning.replace('|', '/')} |")
    return "\n".join(rows)


__all__ = ["FORMATS", "NAME_MAP", "Name", "Log", "LogError", "detect", "read_log", "table_markdown", "names_for",
           "describe"]

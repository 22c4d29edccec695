"""Trainer configuration: frozen dataclasses, overridable by dotted name from TOML or `--set`.

The defaults are the *perfect baseline* of the method: fully on-policy (one optimizer step per
rollout batch, importance ratio exactly 1), the trainer's own log-probs, exact graders, a max
response length that truncates under 1% of responses, and no stabilizer (no KL, no entropy
bonus, no grad clipping). Every off-policy knob defaults to "off".

Overrides never `exec`/`eval`: values are parsed from strings by the field's declared type
(nanoGPT's configurator idea, without exec), unknown keys and wrong types are refused with a
one-line message.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional


class ConfigError(ValueError):
    """A user mistake in a config override; the message is one line naming the field and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    size: str = "nano"
    """Named size from the model factory (nano, micro, small); ignored when `path` is set."""
    path: Optional[str] = None
    """A local Hugging Face model directory (or a registered name such as smollm2-135m) to load instead."""
    dtype: str = "float32"
    """Parameter dtype of the trained policy."""


@dataclass(frozen=True)
class TaskConfig:
    name: str = "addition"
    """Registered task name (see `solidrl tasks`)."""
    max_new_tokens: Optional[int] = None
    """Response budget; None takes the task's default, chosen so that < 1% of cold-start responses truncate."""


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 64
    group_size: int = 8
    """Samples per prompt (the GRPO group)."""
    temperature: float = 1.0
    top_k: int = 0
    """0 = no top-k truncation (pure sampling from the policy)."""
    top_p: float = 1.0


@dataclass(frozen=True)
class AlgoConfig:
    advantage: str = "grpo"
    policy_loss: str = "vanilla"
    loss_agg: str = "token-mean"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: float = 3.0
    kl_coef: float = 0.0
    """Coefficient of KL(pi || pi_ref) to the frozen cold-start model; 0 = off (the perfect baseline)."""
    kl_estimator: str = "k3"
    kl_placement: str = "loss"
    """'loss' (added to the loss, aggregated like the PG loss) or 'reward' (subtracted from each sequence's reward, summed over its tokens)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient: loss -= entropy_coef * agg(H_t). 0 = off."""
    length_penalty: float = 0.0
    """reward -= length_penalty * length / max_new_tokens. 0 = off."""
    token_filter: str = "all"
    """Which response tokens enter the loss: 'all', or 'top_entropy' (Wang et al. 2025: the top `token_filter_frac` by entropy)."""
    token_filter_frac: float = 0.2
    hard_prompt_weight: float = 1.0
    """Multiply the loss of prompts whose group accuracy < 0.5 by this factor (a 'sense-driven' knob, for hypotheses)."""


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    """adamw or sgd."""
    lr: float = 3e-4
    """AdamW's first steps move every weight by ~lr (sign-like), so it is small: 2e-3 halves the
    nano cold start's accuracy in one step, 3e-4 raises it ~10 points in 40 steps (measured)."""
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    """Max global grad norm; 0 = no clipping (the perfect baseline)."""
    trust_region_kl: float = 0.0
    """KL trust region delta (0 = off): each optimizer update is rescaled along its own direction so that
    KL(pi_old || pi_new) over the update's response tokens is delta (trainer/trust_region.py)."""
    trust_region_mode: str = "predict"
    """How the trust region gets KL(s) of the scaled step: predict (jvp2's second-order logits, one nested
    forward-mode pass) or line_search (the exact KL, one forward per trial scale; the comparison)."""
    trust_region_max_scale: float = 10.0
    """The largest factor the trust region grows a step by (a step whose KL stays below delta at this scale is
    taken at it)."""


@dataclass(frozen=True)
class OffPolicyConfig:
    """The knobs that break the perfect baseline (all off by default)."""

    mini_batches: int = 1
    """Optimizer steps per epoch over the rollout batch."""
    epochs: int = 1
    """Passes over each rollout batch (PPO-style reuse)."""
    staleness: int = 0
    """Rollouts come from the policy of `staleness` steps ago (an asynchronous rollout engine). Snapshots
    are taken once per step (rollout batch), so the lag is staleness x mini_batches x epochs optimizer
    updates. pi_old in the loss is recomputed by the trainer (the current policy), so the loss's ratio
    pi / pi_old does not see staleness; pi_old / pi_rollout does, and the correction weighs by it."""
    rollout_dtype: str = "float32"
    """Precision of the rollout engine's weights: float32 (same as training), bfloat16 or float16."""
    logit_noise: float = 0.0
    """Std of Gaussian noise added to the sampler's logits (a calibrated training-inference mismatch)."""
    partial_versions: int = 1
    """Partial rollouts: each response is generated across up to this many policy versions. The budget
    is split into m segments of ceil(budget/m) tokens; segment j (0-based) is sampled by the policy of
    staleness + (m - 1 - j) steps ago, its KV cache recomputed under the new weights at each boundary,
    and every token keeps the version that sampled it (Rollout.token_version). 1 = off."""
    correction: str = "none"
    """Off-policy correction applied to each token's loss: none, tis, icepop, masked_seq_is."""
    tis_cap: float = 2.0
    icepop_low: float = 0.5
    icepop_high: float = 2.0
    seq_low: float = 0.5
    seq_high: float = 2.0


@dataclass(frozen=True)
class SFTConfig:
    """Cold start: supervised fine-tuning on the task's reference solutions."""

    seed: int = 0
    """Seed of the cold start; separate from run.seed so all RL seeds share one cold start."""
    batch_size: int = 128
    lr: Optional[float] = None
    """SFT learning rate; None takes the model size's default (nano 3e-3; micro/small 1e-3: at 3e-3
    micro stalled at pass@1 0.13 after 3000 steps, at 1e-3 it reached 0.42 in 300, measured)."""
    max_steps: int = 3000
    eval_every: int = 50
    eval_prompts: int = 256
    target_accuracy: float = 0.35
    """Stop once sampled pass@1 at temperature 1 reaches this (RL needs room to improve: a 20-70% band)."""


@dataclass(frozen=True)
class ProbesConfig:
    """Which probes run and how often. The trainer only carries this section; solidrl.probes reads it."""

    enabled: bool = True
    groups: str = "all"
    """Comma-separated probe groups, or 'all' (see docs/metrics.md for the groups and their keys)."""
    every: int = 1
    """Run the probes every N steps (rows in between carry only the loop's own keys)."""
    jvp_every: int = 0
    """Run the JVP first-order predictor every N steps (0 = off; it costs about three forwards)."""
    jvp2_every: int = 0
    """Run the second-order logit predictor `jvp2` (forward-over-forward AD: dz1 and dz2 in one nested pass,
    which also gives the first-order jvp's stats) every N steps (0 = off)."""
    max_states: int = 0
    """Evaluate the expensive probes (the step and reference forwards, the JVP) on at most this many sequences (0 = all)."""
    save_stats: bool = True
    """Store the per-step batch statistics predictors need in run_dir/stats/."""
    audit_every: int = 10
    """Run the loss-term audit and the consistency check (solidrl audit's loss_terms and consistency
    items) every N steps, step 0 included (0 = off). They check the trainer's code path, which is the
    same on every step, and each costs about one more forward and backward; every step would double
    a nano step (bench/probe_overhead.py)."""


@dataclass(frozen=True)
class RunConfig:
    steps: int = 40
    seed: int = 0
    checkpoint_every: int = 0
    """Save a resumable checkpoint every N steps (0 = only at the end)."""
    device: str = "cpu"
    threads: int = 0
    """torch intra-op threads; 0 leaves torch's default."""
    collapse_reward_floor: float = -1.0
    """Stop with status 'collapsed' when the mean reward stays below this for `collapse_patience` steps (-1 = off)."""
    collapse_patience: int = 5
    """Consecutive steps a reward or entropy criterion must hold before the run is called collapsed."""
    collapse_entropy_high: float = 0.0
    """Collapsed when entropy/token_mean stays above this fraction of log(vocab) (an exploded, near-uniform
    policy; e.g. 0.9); 0 = off."""
    collapse_entropy_low: float = 0.0
    """Collapsed when entropy/token_mean stays below this many nats per token (a vanished, deterministic
    policy; e.g. 1e-3); 0 = off."""
    collapse_kl_jump: float = 0.0
    """Collapsed when kl/step exceeds this factor times the median kl/step of the run's earlier steps
    (needs 3 earlier steps and the probes' kl/step; e.g. 100 = two orders of magnitude); 0 = off."""


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    offpolicy: OffPolicyConfig = field(default_factory=OffPolicyConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def updates_per_step(self) -> int:
        return self.offpolicy.mini_batches * self.offpolicy.epochs

    @property
    def fully_on_policy(self) -> bool:
        """True when the loss's ratio is exactly 1 by construction (the perfect baseline)."""
        o = self.offpolicy
        return (self.updates_per_step == 1 and o.staleness == 0 and o.partial_versions == 1
                and o.rollout_dtype == "float32" and o.logit_noise == 0.0 and self.rollout.temperature == 1.0
                and self.rollout.top_k == 0 and self.rollout.top_p == 1.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# Overrides by dotted name


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(raw: Any, tp: Any, key: str) -> Any:
    """Coerce `raw` (a string from --set, or a TOML value) to the declared type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        return _parse_value(raw, args[0], key)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(raw, str):
            parts = [p for p in raw.strip("()[] ").split(",") if p.strip()]
        elif isinstance(raw, (list, tuple)):
            parts = list(raw)
        else:
            raise ConfigError(f"{key}: expected a list of {len(args)} numbers, got {raw!r}")
        if len(parts) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(parts)} ({raw!r})")
        return tuple(_parse_value(p, a, key) for p, a in zip(parts, args))
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {raw!r}")
    if tp is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {raw!r}")
    if tp is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected a number, got {raw!r}")
        if isinstance(raw, (int, float)):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {raw!r}")
    if tp is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(f"{key}: expected a string, got {raw!r}")
    raise ConfigError(f"{key}: unsupported field type {tp}")


def field_names(cfg: TrainConfig | None = None) -> list[str]:
    """All dotted field names, e.g. 'algo.advantage'."""
    out = []
    for sec in dataclasses.fields(TrainConfig):
        for f in dataclasses.fields(_field_types(TrainConfig)[sec.name]):
            out.append(f"{sec.name}.{f.name}")
    return out


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Return a new config with dotted-name overrides applied; values may be strings (parsed by type)."""
    sections: dict[str, dict[str, Any]] = {}
    sec_types = _field_types(TrainConfig)
    for key, raw in overrides.items():
        if "." not in key:
            raise ConfigError(
                f"unknown config field {key!r}: use a dotted name, one of sections "
                f"{', '.join(sec_types)} (e.g. algo.advantage=rloo)")
        sec, name = key.split(".", 1)
        if sec not in sec_types:
            raise ConfigError(f"unknown config section {sec!r} in {key!r}; known: {', '.join(sec_types)}")
        ftypes = _field_types(sec_types[sec])
        if name not in ftypes:
            raise ConfigError(f"unknown config field {key!r}; known in [{sec}]: {', '.join(ftypes)}")
        sections.setdefault(sec, {})[name] = _parse_value(raw, ftypes[name], key)
    new = {s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in sections.items()}
    return dataclasses.replace(cfg, **new)


def parse_set_args(items: list[str]) -> dict[str, str]:
    """Parse ['a.b=1', ...] into a dict; a malformed item is a ConfigError."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set algo.advantage=rloo")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'algo': {'advantage': 'grpo'}} -> {'algo.advantage': 'grpo'} (for TOML tables)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from `to_dict()` output (e.g. a run's config.json)."""
    return apply_overrides(TrainConfig(), flatten(d))


def validate(cfg: TrainConfig) -> None:
    """Value checks that types alone cannot express (registry names are checked where they live)."""
    checks = [
        (cfg.rollout.prompts_per_step >= 1, "rollout.prompts_per_step must be >= 1"),
        (cfg.rollout.group_size >= 1, "rollout.group_size must be >= 1"),
        (cfg.rollout.temperature > 0, "rollout.temperature must be > 0"),
        (cfg.run.steps >= 0, "run.steps must be >= 0"),
        (cfg.optim.lr >= 0, "optim.lr must be >= 0"),
        (cfg.optim.name in ("adamw", "sgd"), f"optim.name {cfg.optim.name!r} unknown; known: adamw, sgd"),
        (cfg.algo.kl_placement in ("loss", "reward"),
         f"algo.kl_placement {cfg.algo.kl_placement!r} unknown; known: loss, reward"),
        (cfg.algo.token_filter in ("all", "top_entropy"),
         f"algo.token_filter {cfg.algo.token_filter!r} unknown; known: all, top_entropy"),
        (0 < cfg.algo.token_filter_frac <= 1, "algo.token_filter_frac must be in (0, 1]"),
        (cfg.offpolicy.mini_batches >= 1, "offpolicy.mini_batches must be >= 1"),
        (cfg.offpolicy.epochs >= 1, "offpolicy.epochs must be >= 1"),
        (cfg.offpolicy.staleness >= 0, "offpolicy.staleness must be >= 0"),
        (cfg.offpolicy.partial_versions >= 1, "offpolicy.partial_versions must be >= 1 (1 = off)"),
        (cfg.run.collapse_patience >= 1, "run.collapse_patience must be >= 1"),
        (cfg.run.collapse_entropy_high >= 0 and cfg.run.collapse_entropy_low >= 0
         and cfg.run.collapse_kl_jump >= 0, "run.collapse_entropy_high/_low and run.collapse_kl_jump must be >= 0 (0 = off)"),
        (cfg.offpolicy.rollout_dtype in ("float32", "bfloat16", "float16"),
         f"offpolicy.rollout_dtype {cfg.offpolicy.rollout_dtype!r} unknown; known: float32, bfloat16, float16"),
        (cfg.offpolicy.logit_noise >= 0, "offpolicy.logit_noise must be >= 0"),
        (cfg.probes.every >= 1, "probes.every must be >= 1"),
        (cfg.optim.trust_region_kl >= 0 and cfg.optim.trust_region_max_scale > 0,
         "optim.trust_region_kl must be >= 0 (0 = off) and optim.trust_region_max_scale > 0"),
        (cfg.optim.trust_region_mode in ("predict", "line_search"),
         f"optim.trust_region_mode {cfg.optim.trust_region_mode!r} unknown; known: predict, line_search"),
        (cfg.probes.jvp_every >= 0 and cfg.probes.jvp2_every >= 0 and cfg.probes.audit_every >= 0
         and cfg.probes.max_states >= 0,
         "probes.jvp_every, probes.jvp2_every, probes.audit_every and probes.max_states must be >= 0 (0 = off / all)"),
        (cfg.model.dtype in ("float32", "float64", "bfloat16"),
         f"model.dtype {cfg.model.dtype!r} unknown; known: float32, float64, bfloat16"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    n_seq = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    if n_seq % cfg.offpolicy.mini_batches:
        raise ConfigError(
            f"offpolicy.mini_batches={cfg.offpolicy.mini_batches} must divide prompts_per_step*group_size={n_seq}")

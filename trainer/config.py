"""Trainer configuration: frozen dataclasses, overridable by dotted name from TOML or `--set`.

The defaults are the *perfect baseline* of the method: fully on-policy (one optimizer step per
rollout batch, importance ratio exactly 1), the trainer's own log-probs, exact graders, a max
response length that truncates under 1% of responses, and no stabilizer (no KL, no entropy
bonus, no grad clipping). Every off-policy knob defaults to "off".

Overrides never `exec`/`eval`: values are parsed from strings by the field's declared type
(nanoGPT's configurator idea, without exec), unknown keys and wrong types are refused with a
one-line message.

Size: ~580 lines, most of them field docstrings (every field documents itself here, the one place
`--help` and the docs point to) and the one validator every entry point shares.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ConfigError  # noqa: F401 - re-exported: solidrl.trainer.config.ConfigError


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
    """Response budget in [1, MAX_NEW_TOKENS]; None takes the task's default, chosen so that < 1% of
    cold-start responses truncate (0 is refused, not read as None)."""


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 64
    """>= 1; prompts_per_step x group_size <= MAX_BATCH_SEQS."""
    group_size: int = 8
    """Samples per prompt (the GRPO group); >= 2 for the group estimators grpo, rloo, dr_grpo."""
    temperature: float = 1.0
    """> 0."""
    top_k: int = 0
    """>= 0; 0 = no top-k truncation (pure sampling from the policy)."""
    top_p: float = 1.0
    """In (0, 1]; 1 = no nucleus truncation."""


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
    reward_transforms: str = ""
    """Reward transforms applied after grading, in order, as a comma list of registered names (trainer/shaping.py:
    length_penalty, kl_penalty, pass_at_k, or a plugin's); '' = none. They run after the ones that
    length_penalty and kl_placement='reward' select."""
    token_weighting: str = "none"
    """A registered token weighting (trainer/shaping.py: hard_prompt, top_entropy, token_id, position, or a
    plugin's): per-sequence advantage factors, a 0/1 token mask, or per-token PG weights; 'none' = off.
    It multiplies with the ones that hard_prompt_weight and token_filter select."""
    controller: str = "none"
    """A step controller adapting a coefficient each step (trainer/controllers.py): adaptive_kl (kl_coef toward
    a target KL, verl's AdaptiveKLController), adaptive_entropy (entropy_coef toward a target entropy), or a
    plugin's; 'none' = off. The config's coefficient is the start; rows log controller/<coefficient>."""
    controller_target: float = 0.0
    """The controller's target: KL per token (adaptive_kl) or entropy in nats per token (adaptive_entropy)."""
    controller_horizon: float = 10000.0
    """adaptive_kl's horizon: each step multiplies kl_coef by at most 1 +- 0.2 x sequences / horizon (verl's default 10000)."""


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    """adamw or sgd."""
    lr: float = 3e-4
    """AdamW's first steps move every weight by ~lr (sign-like), so it is small: 2e-3 halves the
    nano cold start's accuracy in one step, 3e-4 raises it ~10 points in 40 steps (measured)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Each in [0, 1)."""
    weight_decay: float = 0.0
    """>= 0."""
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
    """In [1, MAX_STEPS]."""
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
    jvp3_every: int = 0
    """Run the third-order logit predictor `jvp3` (three nested forward-mode passes: dz1, dz2, dz3; it also
    gives jvp2's and jvp's stats) every N steps (0 = off). Nested, about 3x jvp2's cost (bench/jvp_cost.py)."""
    jvp_mode: str = "nested"
    """How jvp2 and jvp3 get dz2 and dz3: nested (forward-mode AD nested 2 or 3 deep: exact, 12 and 38 forwards'
    cost on nano) or fd (the jvp's exact dz1 plus two forwards at theta +- h dtheta, central differences:
    theory.kernel.fd_taylor_logits; the jvp's cost plus two forwards, O(h^2) truncation and float32 rounding)."""
    jvp_fd_h: float = 0.25
    """The fd mode's step fraction h in (0, 1]: truncation h^2 dz4 / 12, rounding ~1e-7 |z| * 6 / h^3 in dz3."""
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
    """In [0, MAX_STEPS]."""
    seed: int = 0
    """In [0, MAX_SEED]."""
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
    params: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    """Parameters of the selected registry entries, set explicitly: ((selecting field, ((name, value), ...)), ...),
    e.g. (('algo.advantage', (('k', 4),)),) from `--set algo.advantage.k=4` (docs/plugins.md). Defaults are
    not stored: `entry_params` adds them."""
    plugins: tuple[tuple[str, str], ...] = ()
    """Plugin files the run was made with: ((absolute path, sha256), ...) (trainer/plugins.py)."""

    def entry_params(self, field_: str) -> dict[str, Any]:
        """The keyword arguments of the entry that config field `field_` selects: declared defaults <- set values.

        E.g. cfg.entry_params("algo.advantage") -> {"k": 4}; {} for an entry without parameters.
        """
        reg = selector_registry(field_)
        if reg is None:
            raise ConfigError(f"{field_} does not select a registered entry")
        from solidrl.theory.registry import ParamError, UnknownNameError

        sec, name = field_.split(".", 1)
        entry = getattr(getattr(self, sec), name)
        try:  # checked again here: a config built with dataclasses.replace may hold another entry's parameters
            return reg.resolved(entry, reg.bind(entry, dict(dict(self.params).get(field_, ())), field_))
        except (ParamError, UnknownNameError) as e:
            raise ConfigError(str(e)) from None

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
        d = dataclasses.asdict(self)
        d["params"] = {f: dict(kv) for f, kv in self.params}
        d["plugins"] = [{"path": p, "sha256": h} for p, h in self.plugins]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# Overrides by dotted name


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _sections() -> dict[str, Any]:
    """section name -> its dataclass (params and plugins are not sections)."""
    return {k: v for k, v in _field_types(TrainConfig).items() if dataclasses.is_dataclass(v)}


def selector_registry(field_: str):
    """The registry whose entry the str field `field_` (e.g. 'algo.advantage') selects, or None.

    The built-in trainer registries are imported here so that they exist; a registry declared in another
    module (Registry(kind, field=...)) is found once that module is imported (trainer/loop.py imports all).
    """
    from solidrl.theory.registry import by_field

    from . import algos, tasks  # noqa: F401 - registers the built-in entries

    return by_field(field_)


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
    for sec, cls in _sections().items():
        for f in dataclasses.fields(cls):
            out.append(f"{sec}.{f.name}")
    return out


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Return a new config with dotted-name overrides applied; values may be strings (parsed by type)."""
    sections: dict[str, dict[str, Any]] = {}
    sec_types = _sections()
    entry_params: dict[str, dict[str, Any]] = {}  # selecting field -> {param: raw value}
    for key, raw in overrides.items():
        if "." not in key:
            raise ConfigError(
                f"unknown config field {key!r}: use a dotted name, one of sections "
                f"{', '.join(sec_types)} (e.g. algo.advantage=rloo)")
        sec, name = key.split(".", 1)
        if sec not in sec_types:
            raise ConfigError(f"unknown config section {sec!r} in {key!r}; known: {', '.join(sec_types)}")
        ftypes = _field_types(sec_types[sec])
        head, _, param = name.partition(".")
        if param and head in ftypes and ftypes[head] is str:  # a parameter of the selected entry
            entry_params.setdefault(f"{sec}.{head}", {})[param] = raw
            continue
        if name not in ftypes:
            raise ConfigError(f"unknown config field {key!r}; known in [{sec}]: {', '.join(ftypes)}")
        sections.setdefault(sec, {})[name] = _parse_value(raw, ftypes[name], key)
    new = {s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in sections.items()}
    out = dataclasses.replace(cfg, **new)
    return _apply_params(cfg, out, entry_params) if (entry_params or cfg.params) else out


def _apply_params(old: TrainConfig, cfg: TrainConfig, given: dict[str, dict[str, Any]]) -> TrainConfig:
    """cfg with its params: those of `old` whose entry is still selected, updated by `given` (checked, coerced).

    A parameter is validated against the entry selected after the overrides (`--set algo.advantage=x
    --set algo.advantage.k=4` sets k of x); an unknown one or a wrong type is a ConfigError naming the allowed.
    """
    from solidrl.theory.registry import ParamError, UnknownNameError

    def selected(c: TrainConfig, f: str) -> str:
        sec, name = f.split(".", 1)
        return getattr(getattr(c, sec), name)

    params = {f: dict(kv) for f, kv in old.params if selected(old, f) == selected(cfg, f)}
    for f, vals in given.items():
        reg = selector_registry(f)
        if reg is None:
            raise ConfigError(f"{f}.{next(iter(vals))}: {f} does not select a registered entry, so it has no "
                              f"parameters; parameters belong to a selecting field (e.g. algo.advantage.<name>)")
        try:
            params.setdefault(f, {}).update(reg.bind(selected(cfg, f), vals, f))
        except (ParamError, UnknownNameError) as e:
            raise ConfigError(str(e)) from None
    packed = tuple((f, tuple(sorted(kv.items()))) for f, kv in sorted(params.items()) if kv)
    return dataclasses.replace(cfg, params=packed)


def params_overrides(params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{'algo.advantage': {'k': 4}} (config.json's params) -> {'algo.advantage.k': 4} (overrides)."""
    return {f"{f}.{k}": v for f, kv in params.items() for k, v in kv.items()}


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
    d = dict(d)
    params, plugins = d.pop("params", {}) or {}, d.pop("plugins", []) or []
    cfg = apply_overrides(TrainConfig(), {**flatten(d), **params_overrides(params)})
    return dataclasses.replace(cfg, plugins=tuple((p["path"], p["sha256"]) for p in plugins))


# Upper bounds on sizes: far above any run this toolkit makes on one machine (a nano step of
# 64 x 8 sequences takes ~1 s on a CPU), low enough that a typo such as 1e18 is refused at once
# rather than hanging in an allocation or running for years. Documented in docs/probe-check.md.
MAX_BATCH_SEQS = 65_536
"""rollout.prompts_per_step x rollout.group_size (sequences per step)."""
MAX_STEPS = 1_000_000
"""run.steps and sft.max_steps."""
MAX_NEW_TOKENS = 32_768
"""task.max_new_tokens."""
MAX_REUSE = 1_000
"""offpolicy.epochs, offpolicy.staleness, offpolicy.partial_versions."""
MAX_SEED = 2**32 - 1
"""run.seed and sft.seed (sampling seeds are seed * 1_000_003 + step, which must fit 64 bits)."""
MAX_THREADS = 1_024
GROUP_ADVANTAGES = ("grpo", "rloo", "dr_grpo")
"""Advantage estimators that compare the samples of one prompt: they need rollout.group_size >= 2."""


def _finite_floats(cfg: TrainConfig) -> None:
    """Every float field (and tuple of floats) is a finite number: nan and inf are refused by name."""
    for sec in dataclasses.fields(cfg):
        obj = getattr(cfg, sec.name)
        if not dataclasses.is_dataclass(obj):  # params, plugins: checked by their registries / the loader
            continue
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            vals = v if isinstance(v, tuple) else (v,)
            for x in vals:
                if isinstance(x, float) and not math.isfinite(x):
                    raise ConfigError(f"{sec.name}.{f.name} must be a finite number, got {v!r}")


def check_device(device: str) -> None:
    """`device` names a torch device this machine has (cpu, cuda, cuda:N, mps): one line otherwise."""
    m = re.fullmatch(r"(cpu|cuda|mps)(:(\d{1,3}))?", device)
    if not m:
        raise ConfigError(f"run.device {device!r} is not a device; use cpu, cuda, cuda:N or mps")
    kind = m.group(1)
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"run.device {device!r}: CUDA is not available on this machine; use --device cpu")
        if m.group(3) is not None and int(m.group(3)) >= torch.cuda.device_count():
            raise ConfigError(f"run.device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError(f"run.device {device!r}: MPS is not available on this machine; use --device cpu")


def validate(cfg: TrainConfig, check_system: bool = True) -> None:
    """Every type-independent value check of the config, the one validator for --set, --config and
    every arm of a hypothesis (registry names are checked where they live: loop.check_names).

    Ranges: see each field's docstring; the size bounds are the MAX_* constants above. With
    `check_system` the device must exist on this machine (model.path is checked by loop.check_names,
    beside the other names, through trainer.model.check_model_path).
    """
    _finite_floats(cfg)
    r, a, o, op, s, run, p = cfg.rollout, cfg.algo, cfg.optim, cfg.offpolicy, cfg.sft, cfg.run, cfg.probes
    checks = [
        (r.prompts_per_step >= 1, "rollout.prompts_per_step must be >= 1"),
        (r.group_size >= 1, "rollout.group_size must be >= 1"),
        (r.prompts_per_step * r.group_size <= MAX_BATCH_SEQS,
         f"rollout.prompts_per_step x rollout.group_size = {r.prompts_per_step * r.group_size} sequences per step "
         f"is over the bound {MAX_BATCH_SEQS}"),
        (r.temperature > 0, "rollout.temperature must be > 0"),
        (r.top_k >= 0, f"rollout.top_k must be >= 0 (0 = off), got {r.top_k}"),
        (0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1] (1 = off), got {r.top_p}"),
        (cfg.task.max_new_tokens is None or 1 <= cfg.task.max_new_tokens <= MAX_NEW_TOKENS,
         f"task.max_new_tokens must be in [1, {MAX_NEW_TOKENS}] (leave it unset for the task's default), "
         f"got {cfg.task.max_new_tokens}"),
        (a.advantage not in GROUP_ADVANTAGES or r.group_size >= 2,
         f"algo.advantage={a.advantage!r} compares the samples of a prompt and needs rollout.group_size >= 2, "
         f"got {r.group_size}; raise group_size or use reinforce/raw"),
        (0 <= a.eps_low < 1, f"algo.eps_low must be in [0, 1), got {a.eps_low}"),
        (a.eps_high >= 0, f"algo.eps_high must be >= 0, got {a.eps_high}"),
        (a.dual_clip_c > 1, f"algo.dual_clip_c must be > 1, got {a.dual_clip_c}"),
        (a.kl_coef >= 0, f"algo.kl_coef must be >= 0 (0 = off), got {a.kl_coef}"),
        (a.entropy_coef >= 0, f"algo.entropy_coef must be >= 0 (0 = off), got {a.entropy_coef}"),
        (a.hard_prompt_weight >= 0, f"algo.hard_prompt_weight must be >= 0, got {a.hard_prompt_weight}"),
        (a.kl_placement in ("loss", "reward"), f"algo.kl_placement {a.kl_placement!r} unknown; known: loss, reward"),
        (a.token_filter in ("all", "top_entropy"),
         f"algo.token_filter {a.token_filter!r} unknown; known: all, top_entropy"),
        (0 < a.token_filter_frac <= 1, "algo.token_filter_frac must be in (0, 1]"),
        (o.name in ("adamw", "sgd"), f"optim.name {o.name!r} unknown; known: adamw, sgd"),
        (o.lr >= 0, f"optim.lr must be a finite number >= 0, got {o.lr}"),
        (all(0 <= b < 1 for b in o.betas), f"optim.betas must both be in [0, 1), got {o.betas}"),
        (o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}"),
        (o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 = off), got {o.grad_clip}"),
        (1 <= op.mini_batches <= MAX_BATCH_SEQS, "offpolicy.mini_batches must be >= 1"),
        (1 <= op.epochs <= MAX_REUSE, f"offpolicy.epochs must be in [1, {MAX_REUSE}], got {op.epochs}"),
        (0 <= op.staleness <= MAX_REUSE, f"offpolicy.staleness must be in [0, {MAX_REUSE}], got {op.staleness}"),
        (1 <= op.partial_versions <= MAX_REUSE,
         f"offpolicy.partial_versions must be in [1, {MAX_REUSE}] (1 = off), got {op.partial_versions}"),
        (op.rollout_dtype in ("float32", "bfloat16", "float16"),
         f"offpolicy.rollout_dtype {op.rollout_dtype!r} unknown; known: float32, bfloat16, float16"),
        (op.logit_noise >= 0, "offpolicy.logit_noise must be >= 0"),
        (op.tis_cap > 0, f"offpolicy.tis_cap must be > 0, got {op.tis_cap}"),
        (0 <= op.icepop_low <= op.icepop_high, "offpolicy.icepop_low/high: need 0 <= icepop_low <= icepop_high"),
        (0 <= op.seq_low <= op.seq_high, "offpolicy.seq_low/high: need 0 <= seq_low <= seq_high"),
        (0 <= s.seed <= MAX_SEED, f"sft.seed must be in [0, {MAX_SEED}], got {s.seed}"),
        (1 <= s.batch_size <= MAX_BATCH_SEQS, f"sft.batch_size must be in [1, {MAX_BATCH_SEQS}], got {s.batch_size}"),
        (s.lr is None or s.lr > 0, f"sft.lr must be > 0 (or unset for the size's default), got {s.lr}"),
        (1 <= s.max_steps <= MAX_STEPS, f"sft.max_steps must be in [1, {MAX_STEPS}], got {s.max_steps}"),
        (s.eval_every >= 1, f"sft.eval_every must be >= 1, got {s.eval_every}"),
        (1 <= s.eval_prompts <= MAX_BATCH_SEQS, f"sft.eval_prompts must be in [1, {MAX_BATCH_SEQS}], got {s.eval_prompts}"),
        (0 <= s.target_accuracy <= 1, f"sft.target_accuracy must be in [0, 1], got {s.target_accuracy}"),
        (0 <= run.steps <= MAX_STEPS, f"run.steps must be in [0, {MAX_STEPS}], got {run.steps}"),
        (0 <= run.seed <= MAX_SEED, f"run.seed must be in [0, {MAX_SEED}], got {run.seed}"),
        (run.checkpoint_every >= 0, f"run.checkpoint_every must be >= 0 (0 = only at the end), got {run.checkpoint_every}"),
        (0 <= run.threads <= MAX_THREADS, f"run.threads must be in [0, {MAX_THREADS}] (0 = torch's default), got {run.threads}"),
        (run.collapse_patience >= 1, "run.collapse_patience must be >= 1"),
        (run.collapse_entropy_high >= 0 and run.collapse_entropy_low >= 0
         and run.collapse_kl_jump >= 0, "run.collapse_entropy_high/_low and run.collapse_kl_jump must be >= 0 (0 = off)"),
        (p.every >= 1, "probes.every must be >= 1"),
        (p.jvp_every >= 0 and p.audit_every >= 0 and p.max_states >= 0,
         "probes.jvp_every, probes.audit_every and probes.max_states must be >= 0 (0 = off / all)"),
        (o.trust_region_kl >= 0 and o.trust_region_max_scale > 0,
         "optim.trust_region_kl must be >= 0 (0 = off) and optim.trust_region_max_scale > 0"),
        (o.trust_region_mode in ("predict", "line_search"),
         f"optim.trust_region_mode {o.trust_region_mode!r} unknown; known: predict, line_search"),
        (p.jvp2_every >= 0, f"probes.jvp2_every must be >= 0 (0 = off), got {p.jvp2_every}"),
        (p.jvp3_every >= 0, f"probes.jvp3_every must be >= 0 (0 = off), got {p.jvp3_every}"),
        (p.jvp_mode in ("nested", "fd"), f"probes.jvp_mode must be 'nested' or 'fd', got {p.jvp_mode!r}"),
        (0 < p.jvp_fd_h <= 1, f"probes.jvp_fd_h must be in (0, 1], got {p.jvp_fd_h}"),
        (cfg.model.dtype in ("float32", "float64", "bfloat16"),
         f"model.dtype {cfg.model.dtype!r} unknown; known: float32, float64, bfloat16"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    n_seq = r.prompts_per_step * r.group_size
    if n_seq % op.mini_batches:
        raise ConfigError(
            f"offpolicy.mini_batches={op.mini_batches} must divide prompts_per_step*group_size={n_seq}")
    if check_system:
        check_device(run.device)

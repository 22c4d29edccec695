"""Hypothesis files for probe-check: TOML (read with tomllib) -> frozen dataclasses, fully validated.

A hypothesis names arms (trainer config overrides), a run plan and a list of predictions. Nothing
in the file is evaluated as code: values are TOML scalars, config fields are parsed by their
declared type (trainer.config.apply_overrides), and predictors, estimators and tasks are looked up
by name in their registries, metric names (`metric`, `observed`) in the glossary (probes/glossary.py,
the table of docs/metrics.md), so a typo stops here, before any cold start. Every mistake raises
`HypothesisError`, whose message is one line: `FILE: field 'predict[2].metric': what is wrong; what
is allowed`.

The schema, field by field, is documented in docs/probe-check.md; hypotheses/ holds examples.

Left out on purpose: expressions of any kind (a predicted value is a number or a registered
predictor's output, never a formula), and grids of arms (an arm is one named set of overrides;
a prediction compares one pair of arms).

Size: one schema and its one parser (~680 lines); every field's check sits beside the field it checks,
so a user's error message and the schema it cites come from one place.
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from solidrl.probes.errors import InputError
from solidrl.probes.glossary import close_matches, is_known

from .verdict import DEFAULT_METHOD, METHODS

KINDS = ("per_step", "ab", "counterfactual", "trajectory")
COMPARES = ("direction", "ratio", "difference", "per_step")
DIRECTIONS = ("increase", "decrease")
STATS = ("final", "mean", "auc")
RESAMPLES = METHODS                # interval methods (probes/check/verdict.py); default seed_t
COLD_STARTS = ("per_seed", "shared")  # [run] cold_start: RL seed s on cold start sft.seed + s, or one for all
SHADOW_OPTIMIZERS = ("continue", "fresh")  # counterfactual: the shadow continues B's moments, or starts at zero
PER_STEP_THRESHOLDS = ("min_r", "slope", "min_sign_agreement", "max_median_rel_error")
# Fields that decide the sampled batch: a counterfactual pair must agree on all of them so that the
# two updates start from the same weights AND the same tokens.
SAMPLING_SECTIONS = ("model", "task", "rollout", "sft", "run")
SAMPLING_FIELDS = ("offpolicy.staleness", "offpolicy.partial_versions", "offpolicy.rollout_dtype",
                   "offpolicy.logit_noise")
# [run] keys that map to one trainer field each (the rest of the trainer is reachable by [run.set]).
RUN_SHORTCUTS = {"task": "task.name", "model": "model.size", "prompts_per_step": "rollout.prompts_per_step",
                 "group_size": "rollout.group_size", "max_new_tokens": "task.max_new_tokens",
                 "lr": "optim.lr"}
# fullmatch, never `$` (which also matches before a final newline: name = "x\n" would pass).
_METRIC = re.compile(r"[a-z][a-z0-9_]*(/[A-Za-z0-9_@.\-]+)+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
MAX_NAME = 100
"""Longest hypothesis or arm name (they name folders; a file name may have at most 255 bytes)."""
MAX_METRIC = 200
"""Longest metric name (plots are named after it)."""
MAX_SEEDS = 1_000
MAX_FILE_BYTES = 1_000_000
"""A hypothesis file is a few kB; a bigger one is refused before it is parsed."""


class HypothesisError(InputError):
    """A malformed hypothesis; `str()` is one line naming the file, the field and what is allowed."""


# ----------------------------------------------------------------------------------------------
# The dataclasses


@dataclass(frozen=True)
class Plan:
    """How many steps and which seeds each arm runs; `overrides` apply to every arm."""

    steps: int
    seeds: tuple[int, ...]
    overrides: tuple[tuple[str, Any], ...] = ()
    counterfactual_every: int = 1
    """Take the counterfactual treatment step at every N-th step of the baseline run."""
    cold_start: str = "per_seed"
    """per_seed: RL seed s starts from cold start sft.seed + s (the seeds' interval covers the
    starting point); shared: every seed starts from cold start sft.seed."""


@dataclass(frozen=True)
class Predicted:
    """What a prediction says: a direction, or a value (a number or a predictor's output) +- tolerance."""

    compare: str                      # direction | ratio | difference
    direction: Optional[str] = None   # increase | decrease (compare = direction)
    value: Optional[float] = None     # a number the user wrote
    predictor: Optional[str] = None   # or a registered predictor, read from the baseline arm's rows
    output: Optional[str] = None      # the predictor's output key (its metric name)
    tolerance: float = 0.0

    def describe(self) -> str:
        if self.compare == "direction":
            return f"{self.direction}"
        what = f"{self.value:g}" if self.predictor is None else f"pred/{self.predictor}/{self.output}"
        return f"{self.compare} {what} ± {self.tolerance:g}"


@dataclass(frozen=True)
class Rival:
    """A rival account's predicted value for the same contrast: a number, or a predictor's output."""

    label: str
    value: Optional[float] = None
    predictor: Optional[str] = None
    output: Optional[str] = None

    @property
    def pred_key(self) -> Optional[str]:
        return None if self.predictor is None else f"pred/{self.predictor}/{self.output}"


@dataclass(frozen=True)
class Prediction:
    index: int
    kind: str
    metric: str
    label: str
    arms: tuple[str, str] = ("baseline", "treatment")
    """(baseline arm, treatment arm) for ab / counterfactual; arms[0] is the arm of per_step / trajectory."""
    predicted: Optional[Predicted] = None     # ab, counterfactual
    stat: str = "mean"                        # ab: final | mean | auc
    window: Optional[tuple[int, int]] = None  # [start, stop) in steps
    last: Optional[int] = None                # or: the last N steps
    resample: str = DEFAULT_METHOD            # the interval method (verdict.METHODS)
    predictor: Optional[str] = None           # per_step, trajectory
    output: Optional[str] = None              # per_step, trajectory: predictor output (default = metric)
    observed: Optional[str] = None            # trajectory: the observed trajectory metric
    min_r: Optional[float] = None             # per_step thresholds
    slope: Optional[tuple[float, float]] = None
    min_sign_agreement: Optional[float] = None
    max_median_rel_error: Optional[float] = None
    ratio: Optional[tuple[float, float]] = None  # trajectory: accumulated predicted / observed change
    rivals: tuple[Rival, ...] = ()            # ab, counterfactual with a tolerance: values a rival predicts
    shadow_optimizer: str = "continue"        # counterfactual: continue | fresh
    note: str = ""
    predictor_params: tuple[tuple[str, Any], ...] = ()
    """The predictor's parameters ("predictor.<name>" = value in the file); set ones are computed from stats/."""

    @property
    def field(self) -> str:
        return f"predict[{self.index}]"

    @property
    def arm(self) -> str:
        return self.arms[0]

    @property
    def pred_key(self) -> Optional[str]:
        """The row key the predictor writes: pred/<predictor>/<output>."""
        name = self.predictor or (self.predicted.predictor if self.predicted else None)
        if name is None:
            return None
        out = self.output or (self.predicted.output if self.predicted and self.predicted.output else None)
        return f"pred/{name}/{out or self.metric}"

    @property
    def output_field(self) -> str:
        """The field that names the predictor's output: output when given, else metric."""
        explicit = self.output or (self.predicted is not None and self.predicted.output not in (None, self.metric))
        return f"{self.field}.output" if explicit else f"{self.field}.metric"

    def arms_used(self) -> tuple[str, ...]:
        return self.arms if self.kind in ("ab", "counterfactual") else (self.arms[0],)

    @property
    def shadow_dir(self) -> str:
        """The treatment shadow's folder inside the baseline run: cf-<treatment>[-fresh]."""
        return f"cf-{self.arms[1]}" + ("" if self.shadow_optimizer == "continue" else f"-{self.shadow_optimizer}")

    @property
    def baseline_dir(self) -> Optional[str]:
        """Where the baseline side of a counterfactual is read: None = the baseline run itself; with
        fresh moments a second shadow with the baseline's config, cf-<baseline>-fresh (a fresh
        treatment step against the baseline's continued one would compare two optimizer states)."""
        return None if self.shadow_optimizer == "continue" else f"cf-{self.arms[0]}-{self.shadow_optimizer}"

    def shadow_specs(self) -> tuple[tuple[str, str, bool], ...]:
        """(arm whose config the shadow takes, folder, fresh moments) of each shadow this prediction reads."""
        fresh = self.shadow_optimizer == "fresh"
        specs = ((self.arms[1], self.shadow_dir, fresh),)
        return specs + (((self.arms[0], self.baseline_dir, fresh),) if self.baseline_dir else ())


@dataclass(frozen=True)
class Hypothesis:
    name: str
    claim: str
    file: str
    text: str                                      # the file as read (copied next to the report)
    arms: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]   # (name, overrides) in file order
    plan: Plan
    quick: Plan
    predictions: tuple[Prediction, ...]
    derivation: str = ""
    references: tuple[str, ...] = ()
    expected: str = ""
    plugins: tuple[dict, ...] = ()
    """{"path", "sha256"} of every plugin loaded for it: `--plugin` files, then the file's plugins = [...]."""

    def arm(self, name: str) -> dict[str, Any]:
        return dict(dict(self.arms)[name])

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.arms)

    def counterfactual_pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(dict.fromkeys(p.arms for p in self.predictions if p.kind == "counterfactual"))

    def shadows(self) -> tuple[tuple[str, str, str, bool], ...]:
        """Every distinct shadow the counterfactuals read: (baseline arm, config arm, folder, fresh)."""
        out: dict[tuple[str, str], tuple[str, str, str, bool]] = {}
        for p in self.predictions:
            if p.kind == "counterfactual":
                for arm, d, fresh in p.shadow_specs():
                    out.setdefault((p.arms[0], d), (p.arms[0], arm, d, fresh))
        return tuple(out.values())

    def arms_to_run(self) -> tuple[str, ...]:
        used = {a for p in self.predictions for a in (p.arms_used() if p.kind != "counterfactual" else p.arms[:1])}
        return tuple(a for a in self.arm_names if a in used)


# ----------------------------------------------------------------------------------------------
# Field checkers: each takes (value, field) and returns the clean value or raises.


class _Checker:
    def __init__(self, file: str):
        self.file = file

    def fail(self, fld: str, msg: str):
        raise HypothesisError(self.file, fld, msg)

    def string(self, v, fld, nonempty=True) -> str:
        if not isinstance(v, str):
            self.fail(fld, f"expected a string, got {_show(v)}")
        if nonempty and not v.strip():
            self.fail(fld, "must not be empty")
        return v

    def integer(self, v, fld, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(fld, f"expected an integer, got {_show(v)}")
        if lo is not None and v < lo:
            self.fail(fld, f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            self.fail(fld, f"must be <= {hi}, got {v}")
        return v

    def number(self, v, fld, lo: Optional[float] = None, hi: Optional[float] = None) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(fld, f"expected a finite number, got {_show(v)}")
        if lo is not None and v < lo:
            self.fail(fld, f"must be >= {lo:g}, got {v:g}")
        if hi is not None and v > hi:
            self.fail(fld, f"must be <= {hi:g}, got {v:g}")
        return float(v)

    def choice(self, v, fld, allowed) -> str:
        if not isinstance(v, str) or v not in allowed:
            self.fail(fld, f"{_show(v)} is not allowed; allowed: {', '.join(allowed)}")
        return v

    def pair(self, v, fld, integer=False, ordered=True) -> tuple:
        if not isinstance(v, list) or len(v) != 2:
            self.fail(fld, f"expected a list of two {'integers' if integer else 'numbers'} [lo, hi], got {_show(v)}")
        conv = self.integer if integer else self.number
        a, b = conv(v[0], fld), conv(v[1], fld)
        if ordered and not a < b:
            self.fail(fld, f"expected lo < hi, got [{a}, {b}]")
        return (a, b)

    def metric(self, v, fld, glossary: bool = True) -> str:
        """A metric name; with glossary, one docs/metrics.md defines (a predictor's output need not be)."""
        self.string(v, fld)
        if len(v) > MAX_METRIC or not _METRIC.fullmatch(v):
            self.fail(fld, f"{v!r} is not a metric name; metric names have the form group/name "
                           "(e.g. entropy/delta, grad/norm, reward/accuracy)")
        if glossary and not is_known(v):
            close = close_matches(v)
            self.fail(fld, f"unknown metric {v!r} (docs/metrics.md defines the names); "
                           + (f"close matches: {', '.join(close)}" if close else "see docs/metrics.md"))
        return v

    def predictor(self, v, fld) -> str:
        self.string(v, fld)
        from solidrl.theory.registry import UnknownNameError

        reg = predictor_registry()
        if reg is None:
            self.fail(fld, f"unknown predictor {v!r}; no predictors are registered "
                           "(solidrl.theory.predictors is not available)")
        try:
            reg.check(v)
        except UnknownNameError as e:
            self.fail(fld, str(e))
        return v

    def table(self, v, fld) -> dict:
        if not isinstance(v, dict):
            self.fail(fld, f"expected a table, got {_show(v)}")
        return v

    def keys(self, d: dict, fld: str, allowed, required=()) -> None:
        for k in d:
            if k not in allowed:
                self.fail(_join(fld, k), f"unknown field; allowed here: {', '.join(sorted(allowed))}")
        for k in required:
            if k not in d:
                self.fail(_join(fld, k), "missing (required)")


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def predictor_registry():
    """solidrl.theory.predictors.PREDICTORS (sympy is imported only when a file names a predictor)."""
    from solidrl.theory import predictors

    return predictors.PREDICTORS


# ----------------------------------------------------------------------------------------------
# Parsing


TOP_KEYS = {"name", "claim", "derivation", "references", "expected", "run", "baseline", "treatment",
            "arms", "predict", "plugins"}
RUN_KEYS = {"steps", "seeds", "set", "quick", "counterfactual_every", "cold_start", *RUN_SHORTCUTS}
QUICK_KEYS = {"steps", "seeds", "set", "counterfactual_every", "cold_start", *RUN_SHORTCUTS}
COMMON_PRED = {"kind", "metric", "label", "note"}
KIND_KEYS = {
    "per_step": COMMON_PRED | {"predictor", "output", "arm", "window", "last", "resample", *PER_STEP_THRESHOLDS},
    "ab": COMMON_PRED | {"arms", "stat", "window", "last", "resample", "compare", "direction",
                         "value", "predictor", "output", "tolerance", "rivals", *PER_STEP_THRESHOLDS},
    "counterfactual": COMMON_PRED | {"arms", "window", "last", "resample", "compare", "direction", "value",
                                     "predictor", "output", "tolerance", "rivals", "shadow_optimizer",
                                     *PER_STEP_THRESHOLDS},
    "trajectory": COMMON_PRED | {"predictor", "output", "arm", "observed", "window", "last", "ratio", "resample"},
}
KIND_REQUIRED = {
    "per_step": ("metric", "predictor"),
    "ab": ("metric", "compare"),
    "counterfactual": ("metric", "compare"),
    "trajectory": ("metric", "predictor", "observed", "ratio"),
}


def load(path: str | Path, extra_plugins: tuple = (), plugin_base: Optional[Path] = None) -> Hypothesis:
    """Read and validate a hypothesis file (raises HypothesisError, never anything else for bad input).

    extra_plugins: plugin files from the command line (--plugin), loaded first. plugin_base: the folder
    the file's `plugins = [...]` paths are relative to (default: the file's own folder; --from-run
    gives the original file's, recorded in plan.json).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise HypothesisError(str(path), "", "is a directory; give a hypothesis TOML file")
        if path.exists() and path.stat().st_size > MAX_FILE_BYTES:
            raise HypothesisError(str(path), "", f"is over {MAX_FILE_BYTES} bytes; a hypothesis file is a few kB")
        raw = path.read_bytes()
    except OSError as e:
        raise HypothesisError(str(path), "", f"cannot read the file ({type(e).__name__}: {e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HypothesisError(str(path), "", f"not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    return parse(text, str(path), extra_plugins, plugin_base)


def _load_plugins(c: _Checker, doc: dict, file: str, extra: tuple, base: Optional[Path]) -> tuple[dict, ...]:
    """Import --plugin files, then the file's plugins = [...] (paths relative to `base`); their records."""
    from solidrl.trainer import plugins as plug

    names = doc.get("plugins", [])
    if not isinstance(names, list):
        c.fail("plugins", f"expected a list of Python file paths, got {_show(names)}")
    recs: dict[str, dict] = {}
    for i, x in enumerate(extra):
        try:
            r = plug.load(x)
        except plug.PluginError as e:
            c.fail("--plugin", str(e))
        recs[r["path"]] = r
    base = base if base is not None else Path(file).resolve().parent
    for i, x in enumerate(names):
        c.string(x, f"plugins[{i}]")
        try:
            r = plug.load(x, base)
        except plug.PluginError as e:
            c.fail(f"plugins[{i}]", str(e))
        recs[r["path"]] = r
    return tuple(recs.values())


def parse(text: str, file: str = "<hypothesis>", extra_plugins: tuple = (),
          plugin_base: Optional[Path] = None) -> Hypothesis:
    """Validate a hypothesis text; every mistake, however deep or odd, is one HypothesisError."""
    try:
        return _parse(text, file, extra_plugins, plugin_base)
    except RecursionError:
        raise HypothesisError(file, "", "nested too deeply to be a hypothesis file") from None


def _parse(text: str, file: str, extra_plugins: tuple, plugin_base: Optional[Path]) -> Hypothesis:
    c = _Checker(file)
    if "\x00" in text:
        c.fail("", "contains a NUL character; a hypothesis file is TOML text")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HypothesisError(file, "", f"not valid TOML ({str(e).splitlines()[0]})") from None
    c.keys(doc, "", TOP_KEYS, required=("name", "claim", "run", "predict"))
    plugin_recs = _load_plugins(c, doc, file, tuple(extra_plugins), plugin_base)  # before any name is looked up
    name = c.string(doc["name"], "name")
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        c.fail("name", f"{_show(name)}: use up to {MAX_NAME} letters, digits, '_', '-', '.' (it names the output folder)")
    claim = c.string(doc["claim"], "claim")
    derivation = c.string(doc.get("derivation", ""), "derivation", nonempty=False)
    expected = c.string(doc.get("expected", ""), "expected", nonempty=False)
    refs = doc.get("references", [])
    if not isinstance(refs, list):
        c.fail("references", f"expected a list of strings, got {_show(refs)}")
    refs = tuple(c.string(r, f"references[{i}]") for i, r in enumerate(refs))

    arms = _parse_arms(c, doc)
    run = c.table(doc["run"], "run")
    c.keys(run, "run", RUN_KEYS, required=("steps", "seeds"))
    plan = _parse_plan(c, run, "run")
    quick_doc = c.table(run.get("quick", {}), "run.quick")
    c.keys(quick_doc, "run.quick", QUICK_KEYS)
    quick = _parse_plan(c, quick_doc, "run.quick", base=plan)

    preds_doc = doc["predict"]
    if not isinstance(preds_doc, list) or not preds_doc:
        c.fail("predict", "expected one or more [[predict]] tables")
    arm_names = tuple(n for n, _ in arms)
    preds = tuple(_parse_prediction(c, p, i, arm_names) for i, p in enumerate(preds_doc))
    labels = [p.label for p in preds]
    for i, lab in enumerate(labels):
        if labels.index(lab) != i:
            c.fail(f"predict[{i}].label", f"duplicate label {lab!r}; labels name the rows of the report")
    hyp = Hypothesis(name=name, claim=claim, file=file, text=text, arms=arms, plan=plan, quick=quick,
                     predictions=preds, derivation=derivation, references=refs, expected=expected,
                     plugins=plugin_recs)
    for p in preds:
        for a in p.arms_used():
            if a not in arm_names:
                what = "arms" if p.kind in ("ab", "counterfactual") else "arm"
                c.fail(f"{p.field}.{what}", f"unknown arm {a!r}; known: {', '.join(arm_names)}"
                       + ("" if a != "treatment" else " (add a [treatment] table)"))
    check_configs(hyp)
    return hyp


def _parse_arms(c: _Checker, doc: dict) -> tuple:
    from solidrl.trainer.config import flatten

    out = []
    tables = [("baseline", doc.get("baseline", {}))]
    if "treatment" in doc:
        tables.append(("treatment", doc["treatment"]))
    extra = c.table(doc.get("arms", {}), "arms")
    for k, v in extra.items():
        if k in ("baseline", "treatment"):
            c.fail(f"arms.{k}", f"'{k}' is a top-level table ([{k}]), not [arms.{k}]")
        if len(k) > MAX_NAME or not _NAME.fullmatch(k):
            c.fail(f"arms.{_show(k)}", f"arm names use up to {MAX_NAME} letters, digits, '_', '-', '.'")
        tables.append((k, v))
    for name, tbl in tables:
        fld = name if name in ("baseline", "treatment") else f"arms.{name}"
        over = flatten(c.table(tbl, fld))
        for k in over:
            if k in ("run.steps", "run.seed"):
                c.fail(f"{fld}.{k}", "steps and seeds are set in [run] (steps = ..., seeds = [...]), not per arm")
        out.append((name, tuple(over.items())))
    return tuple(out)


def _parse_plan(c: _Checker, run: dict, fld: str, base: Optional[Plan] = None) -> Plan:
    from solidrl.trainer.config import flatten

    from solidrl.trainer.config import MAX_SEED, MAX_STEPS

    steps = c.integer(run["steps"], f"{fld}.steps", lo=1, hi=MAX_STEPS) if "steps" in run else base.steps
    if "seeds" in run:
        seeds = run["seeds"]
        if not isinstance(seeds, list) or not seeds or len(seeds) > MAX_SEEDS:
            c.fail(f"{fld}.seeds", f"expected a non-empty list of at most {MAX_SEEDS} integers, got {_show(seeds)}")
        seeds = tuple(c.integer(s, f"{fld}.seeds[{i}]", lo=0, hi=MAX_SEED) for i, s in enumerate(seeds))
        if len(set(seeds)) != len(seeds):
            c.fail(f"{fld}.seeds", f"seeds must be distinct, got {list(seeds)}")
    else:
        seeds = base.seeds
    over = dict(base.overrides) if base else {}
    for k, key in RUN_SHORTCUTS.items():
        if k in run:
            v = run[k]
            if isinstance(v, (dict, list)):
                c.fail(f"{fld}.{k}", f"expected a single value, got {_show(v)}")
            over[key] = v
    sets = flatten(c.table(run.get("set", {}), f"{fld}.set"))
    for k, v in sets.items():
        if k in ("run.steps", "run.seed"):
            c.fail(f"{fld}.set.{k}", "use steps = ... and seeds = [...] in [run] instead")
        over[k] = v
    cf = c.integer(run["counterfactual_every"], f"{fld}.counterfactual_every", lo=1) \
        if "counterfactual_every" in run else (base.counterfactual_every if base else 1)
    cold = c.choice(run["cold_start"], f"{fld}.cold_start", COLD_STARTS) if "cold_start" in run \
        else (base.cold_start if base else "per_seed")
    return Plan(steps=steps, seeds=seeds, overrides=tuple(over.items()), counterfactual_every=cf, cold_start=cold)


def _parse_prediction(c: _Checker, p: Any, i: int, arm_names: tuple[str, ...]) -> Prediction:
    fld = f"predict[{i}]"
    c.table(p, fld)
    # "predictor.<param>" = value: a parameter of the predictor (docs/plugins.md), split off before the key check
    pparams = {k.split(".", 1)[1]: v for k, v in p.items() if isinstance(k, str) and k.startswith("predictor.")}
    p = {k: v for k, v in p.items() if not (isinstance(k, str) and k.startswith("predictor."))}
    if "kind" not in p:
        c.fail(f"{fld}.kind", f"missing (required); allowed: {', '.join(KINDS)}")
    kind = c.choice(p["kind"], f"{fld}.kind", KINDS)
    c.keys(p, fld, KIND_KEYS[kind], required=KIND_REQUIRED[kind])
    metric = c.metric(p["metric"], f"{fld}.metric")
    kw: dict[str, Any] = {}

    if "window" in p and "last" in p:
        c.fail(f"{fld}.window", "give either window = [start, stop] or last = N, not both")
    if "window" in p:
        a, b = c.pair(p["window"], f"{fld}.window", integer=True)
        if a < 0:
            c.fail(f"{fld}.window", f"start must be >= 0, got {a}")
        kw["window"] = (a, b)
    if "last" in p:
        kw["last"] = c.integer(p["last"], f"{fld}.last", lo=1)

    if kind in ("ab", "counterfactual"):
        arms = ("baseline", "treatment")
        if "arms" in p:
            v = p["arms"]
            if not isinstance(v, list) or len(v) != 2 or not all(isinstance(x, str) for x in v) or v[0] == v[1]:
                c.fail(f"{fld}.arms", f"expected two different arm names [baseline_arm, treatment_arm], got {_show(v)}")
            arms = (v[0], v[1])
        kw["arms"] = arms
        kw["predicted"] = _parse_predicted(c, p, fld)
        if kind == "ab":
            kw["stat"] = c.choice(p.get("stat", "mean"), f"{fld}.stat", STATS)
        if kind == "counterfactual" and "shadow_optimizer" in p:
            kw["shadow_optimizer"] = c.choice(p["shadow_optimizer"], f"{fld}.shadow_optimizer", SHADOW_OPTIMIZERS)
        if "rivals" in p:
            kw["rivals"] = _parse_rivals(c, p["rivals"], f"{fld}.rivals", kw["predicted"])
        given = [k for k in PER_STEP_THRESHOLDS if k in p]
        if given and kw["predicted"].compare != "per_step":
            c.fail(f"{fld}.{given[0]}", "per-step thresholds go with compare = 'per_step'")
    else:
        arm = p.get("arm", "baseline")
        c.string(arm, f"{fld}.arm")
        kw["arms"] = (arm, arm)
        kw["predictor"] = c.predictor(p["predictor"], f"{fld}.predictor")
        if "output" in p:
            kw["output"] = c.metric(p["output"], f"{fld}.output", glossary=False)
    if "resample" in p:
        kw["resample"] = c.choice(p["resample"], f"{fld}.resample", RESAMPLES)
    if kind == "per_step" or kw.get("predicted") is not None and kw["predicted"].compare == "per_step":
        if "min_r" in p:
            kw["min_r"] = c.number(p["min_r"], f"{fld}.min_r", lo=-1, hi=1)
        if "slope" in p:
            kw["slope"] = c.pair(p["slope"], f"{fld}.slope")
        if "min_sign_agreement" in p:
            kw["min_sign_agreement"] = c.number(p["min_sign_agreement"], f"{fld}.min_sign_agreement", lo=0, hi=1)
        if "max_median_rel_error" in p:
            kw["max_median_rel_error"] = c.number(p["max_median_rel_error"], f"{fld}.max_median_rel_error", lo=0)
        if not any(k in kw for k in ("min_r", "slope", "min_sign_agreement", "max_median_rel_error")):
            c.fail(fld, "a per-step prediction (kind = 'per_step' or compare = 'per_step') needs at least one "
                        "threshold: min_r, slope, min_sign_agreement, max_median_rel_error")
    if kind == "trajectory":
        kw["observed"] = c.metric(p["observed"], f"{fld}.observed")
        kw["ratio"] = c.pair(p["ratio"], f"{fld}.ratio")
    label = c.string(p["label"], f"{fld}.label") if "label" in p else fld
    note = c.string(p.get("note", ""), f"{fld}.note", nonempty=False)
    if pparams:
        name = kw.get("predictor") or (kw["predicted"].predictor if kw.get("predicted") else None)
        if name is None:
            c.fail(f"{fld}.predictor.{next(iter(pparams))}", "predictor parameters need a predictor = '<name>'")
        from solidrl.theory.registry import ParamError

        try:
            kw["predictor_params"] = tuple(predictor_registry().bind(name, pparams, f"{fld}.predictor").items())
        except ParamError as e:
            where, _, why = str(e).partition(": ")
            c.fail(where, why)
    return Prediction(index=i, kind=kind, metric=metric, label=label, note=note, **kw)


def _parse_rivals(c: _Checker, v: Any, fld: str, pr: Predicted) -> tuple[Rival, ...]:
    """rivals = [{label = "...", value = 1.5}, {label = "...", predictor = "...", output = "..."}]."""
    if pr.compare not in ("ratio", "difference"):
        c.fail(fld, f"rivals go with compare = 'ratio' or 'difference' and a tolerance (this one is {pr.compare!r})")
    if not isinstance(v, list):
        c.fail(fld, f"expected a list of tables [{{label = ..., value = ...}}, ...], got {_show(v)}")
    out = []
    for i, r in enumerate(v):
        f = f"{fld}[{i}]"
        c.table(r, f)
        c.keys(r, f, {"label", "value", "predictor", "output"}, required=("label",))
        label = c.string(r["label"], f"{f}.label")
        if ("value" in r) == ("predictor" in r):
            c.fail(f, "a rival needs exactly one of value = <number> or predictor = '<name>' (with output)")
        if "value" in r:
            if "output" in r:
                c.fail(f"{f}.output", "output names a predictor's output; this rival gives a value")
            out.append(Rival(label, value=c.number(r["value"], f"{f}.value")))
        else:
            if "output" not in r:
                c.fail(f"{f}.output", "missing (required with predictor): the predictor's output key")
            out.append(Rival(label, predictor=c.predictor(r["predictor"], f"{f}.predictor"),
                             output=c.metric(r["output"], f"{f}.output", glossary=False)))
    labels = [r.label for r in out]
    for i, lab in enumerate(labels):
        if labels.index(lab) != i:
            c.fail(f"{fld}[{i}].label", f"duplicate rival label {lab!r}")
    return tuple(out)


def _parse_predicted(c: _Checker, p: dict, fld: str) -> Predicted:
    compare = c.choice(p["compare"], f"{fld}.compare", COMPARES)
    if compare == "per_step":
        for k in ("value", "tolerance", "direction"):
            if k in p:
                c.fail(f"{fld}.{k}", "compare = 'per_step' takes predictor (+ output) and per-step thresholds "
                                     "(min_r, slope, min_sign_agreement, max_median_rel_error)")
        if "predictor" not in p:
            c.fail(f"{fld}.predictor", "missing (required with compare = 'per_step'): the predictor of the "
                                       "treatment-minus-baseline difference per step")
        pred = c.predictor(p["predictor"], f"{fld}.predictor")
        out = c.metric(p["output"], f"{fld}.output", glossary=False) if "output" in p else None
        return Predicted(compare, predictor=pred, output=out or c.metric(p["metric"], f"{fld}.metric"))
    if compare == "direction":
        for k in ("value", "predictor", "tolerance", "output"):
            if k in p:
                c.fail(f"{fld}.{k}", "compare = 'direction' takes only direction = 'increase' | 'decrease'")
        if "direction" not in p:
            c.fail(f"{fld}.direction", f"missing (required with compare = 'direction'); allowed: {', '.join(DIRECTIONS)}")
        return Predicted(compare, direction=c.choice(p["direction"], f"{fld}.direction", DIRECTIONS))
    if "direction" in p:
        c.fail(f"{fld}.direction", f"only with compare = 'direction' (this one is {compare!r})")
    if ("value" in p) == ("predictor" in p):
        c.fail(f"{fld}.value", f"compare = {compare!r} needs exactly one of value = <number> or predictor = '<name>'")
    if "tolerance" not in p:
        c.fail(f"{fld}.tolerance", "missing (required with a value or predictor): the half-width of the predicted interval")
    tol = c.number(p["tolerance"], f"{fld}.tolerance", lo=0)
    if "value" in p:
        if "output" in p:
            c.fail(f"{fld}.output", "output names a predictor's output; this prediction gives a value")
        return Predicted(compare, value=c.number(p["value"], f"{fld}.value"), tolerance=tol)
    pred = c.predictor(p["predictor"], f"{fld}.predictor")
    out = c.metric(p["output"], f"{fld}.output", glossary=False) if "output" in p else None
    return Predicted(compare, predictor=pred, output=out or c.metric(p["metric"], f"{fld}.metric"), tolerance=tol)


# ----------------------------------------------------------------------------------------------
# Arms -> trainer configs


def arm_config(hyp: Hypothesis, arm: str, plan: Plan, seed: int):
    """The TrainConfig of one (arm, seed): defaults <- plan overrides <- arm overrides <- seed, steps."""
    from solidrl.trainer.config import TrainConfig, apply_overrides

    from dataclasses import replace

    over = {**dict(plan.overrides), **hyp.arm(arm), "run.seed": seed, "run.steps": plan.steps}
    if plan.cold_start == "per_seed":  # the cold start varies with the RL seed: sft.seed + s
        over["sft.seed"] = int(over.get("sft.seed", TrainConfig().sft.seed)) + seed
    cfg = apply_overrides(TrainConfig(), over)
    return replace(cfg, plugins=tuple((r["path"], r["sha256"]) for r in hyp.plugins))


def _arm_field(hyp: Hypothesis, arm: str, plan: Plan, msg: str) -> str:
    """Best guess of which field an error message is about: the override whose key or value it names."""
    fld_arm = arm if arm in ("baseline", "treatment") else f"arms.{arm}"
    for k, v in sorted(hyp.arm(arm).items(), key=lambda kv: -len(kv[0])):  # algo.advantage.k before algo.advantage
        if k in msg:
            return f"{fld_arm}.{k}"
    for k, v in hyp.arm(arm).items():
        if repr(v) in msg:
            return f"{fld_arm}.{k}"
    for k, v in plan.overrides:
        if k in msg or repr(v) in msg:
            return f"run.set.{k}"
    return fld_arm


def check_configs(hyp: Hypothesis, plans: Optional[tuple[Plan, ...]] = None) -> None:
    """Build and validate every arm's config under each plan (types, values, registry names)."""
    from solidrl.theory.registry import UnknownNameError
    from solidrl.trainer.config import ConfigError, validate
    from solidrl.trainer.loop import check_names
    from solidrl.trainer.model import ModelLoadError

    for plan in plans or (hyp.plan, hyp.quick):
        for arm in hyp.arm_names:
            try:
                cfg = arm_config(hyp, arm, plan, plan.seeds[0])
                validate(cfg)
                check_names(cfg)
            except (ConfigError, UnknownNameError, ModelLoadError) as e:
                raise HypothesisError(hyp.file, _arm_field(hyp, arm, plan, str(e)), str(e)) from None
    for a, b in hyp.counterfactual_pairs():
        ca, cb = (arm_config(hyp, x, hyp.plan, 0).to_dict() for x in (a, b))
        diff = [f"{s}.{k}" for s in SAMPLING_SECTIONS for k in ca[s] if ca[s][k] != cb[s][k]]
        diff += [k for k in SAMPLING_FIELDS if ca[k.split('.')[0]][k.split('.')[1]] != cb[k.split('.')[0]][k.split('.')[1]]]
        diff += [f"{f}.<parameters>" for f in ("task.name",) if ca["params"].get(f) != cb["params"].get(f)]
        if diff:
            i = next(p.index for p in hyp.predictions if p.kind == "counterfactual" and p.arms == (a, b))
            raise HypothesisError(
                hyp.file, f"predict[{i}].arms",
                f"a counterfactual pair must sample the same batch from the same weights, but arms {a!r} "
                f"and {b!r} differ in {', '.join(diff)}; use kind = 'ab' for this pair")


def resolve_plan(hyp: Hypothesis, quick: bool = False, steps: Optional[int] = None,
                 seeds: Optional[tuple[int, ...]] = None, threads: Optional[int] = None) -> Plan:
    """The plan a run uses: [run], or [run.quick] with --quick; --steps / --seeds override either.

    `threads` sets run.threads (torch intra-op threads) unless the file sets it: the nano model's
    matrices are too small to gain from intra-op threads, and on a shared 2-core machine two
    OpenMP threads per process were measured 8-14x slower than one (spinning under oversubscription).
    """
    from dataclasses import replace

    plan = hyp.quick if quick else hyp.plan
    if threads is not None and "run.threads" not in dict(plan.overrides):
        if threads < 0:
            raise HypothesisError(hyp.file, "--threads", f"must be >= 0, got {threads}")
        plan = replace(plan, overrides=plan.overrides + (("run.threads", threads),))
    if steps is not None:
        if steps < 1:
            raise HypothesisError(hyp.file, "--steps", f"must be >= 1, got {steps}")
        plan = replace(plan, steps=steps)
    if seeds is not None:
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise HypothesisError(hyp.file, "--seeds", f"expected distinct integers >= 0, got {list(seeds)}")
        plan = replace(plan, seeds=tuple(seeds))
    for p in hyp.predictions:
        if p.window and p.window[0] >= plan.steps:
            raise HypothesisError(hyp.file, f"{p.field}.window",
                                  f"starts at step {p.window[0]} but the run has {plan.steps} steps")
    if plan is not hyp.plan and plan is not hyp.quick:
        check_configs(hyp, (plan,))
    return plan


def window_slice(p: Prediction, n_steps: int) -> slice:
    """The steps a prediction looks at: window [start, stop) clipped to the run, the last N, or all."""
    if p.window:
        return slice(p.window[0], min(p.window[1], n_steps))
    if p.last:
        return slice(max(0, n_steps - p.last), n_steps)
    return slice(0, n_steps)


def metrics_needed(hyp: Hypothesis) -> dict[str, list[tuple[str, str]]]:
    """arm -> [(metric key, field)] the predictions read from that arm's rows (predictor keys excluded)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for p in hyp.predictions:
        for a in p.arms_used():
            out.setdefault(a, []).append((p.metric, f"{p.field}.metric"))
        if p.observed:
            out.setdefault(p.arm, []).append((p.observed, f"{p.field}.observed"))
    return out


__all__ = ["HypothesisError", "Hypothesis", "Plan", "Prediction", "Predicted", "load", "parse",
           "arm_config", "check_configs", "resolve_plan", "window_slice", "metrics_needed",
           "predictor_registry", "KINDS", "COMPARES", "STATS", "RESAMPLES", "Rival", "COLD_STARTS",
           "SHADOW_OPTIMIZERS"]

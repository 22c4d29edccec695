"""A character-level tokenizer built with `tokenizers`, wrapped as a transformers fast tokenizer.

Each character of ALPHABET is one token; <pad>=0, <bos>=1, <eos>=2. `decoders.Fuse()` joins the
characters back without spaces (without it transformers puts a space between tokens, see
../shared/NOTES-transformers.md). It round-trips through save_pretrained / from_pretrained.
"""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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

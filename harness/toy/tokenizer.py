"""A standard transformers CLIPTokenizer with a small whole-word vocabulary for the toy world.

open_clip's full BPE vocabulary (49,408 tokens) would make the toy text encoder's embedding table most of the
committed size, so the toy model uses the same tokenizer class with a vocabulary of the world's words (each
one token), the lowercase letters (so any other word still tokenizes, letter by letter) and CLIP's special
tokens. BPE merges are added (lowest priority last) until each vocabulary word assembles into one token.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_toy_tokenizer(words: list[str], folder: str | Path | None = None, model_max_length: int = 77) -> Any:
    """A CLIPTokenizer whose vocabulary holds every word of ``words`` as a single token."""
    letters = list(string.ascii_lowercase) + list(string.digits)
    base_vocab: list[str] = letters + [letter + "</w>" for letter in letters] + [",</w>", ".</w>"]
    merges: list[str] = []
    for _ in range(max(len(word) for word in words)):  # each round joins at least one more pair per word
        tokenizer = _make_tokenizer(base_vocab, merges, model_max_length)
        split_words = [tokenizer.tokenize(word) for word in words]
        if all(len(tokens) == 1 for tokens in split_words):
            break
        for tokens in split_words:
            # a new merge has the highest rank, so it never changes a word that already assembles fully
            if len(tokens) > 1 and f"{tokens[0]} {tokens[1]}" not in merges:
                merges.append(f"{tokens[0]} {tokens[1]}")
    else:
        raise RuntimeError("toy tokenizer: could not assemble every word into one token")
    if folder is not None:
        tokenizer.save_pretrained(folder)
    return tokenizer


def _make_tokenizer(base_vocab: list[str], merges: list[str], model_max_length: int) -> Any:
    from transformers import CLIPTokenizer

    vocab = list(base_vocab)
    for merge in merges:
        joined = merge.replace(" ", "")
        if joined not in vocab:
            vocab.append(joined)
    vocab += [BOS, EOS]
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = Path(scratch) / "vocab.json", Path(scratch) / "merges.txt"
        vocab_file.write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
        merges_file.write_text("\n".join(["#version: 0.2", *merges]) + "\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=model_max_length,
                             unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=EOS)

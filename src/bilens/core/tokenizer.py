"""The byte-level BPE of the sequence model (docs/spec.md §9), through the `tokenizers` library.

A tokenizer is trained once on the training split, saved as `tokenizer.json` (the library's
own format) inside the checkpoint, and attached to a loaded model as `model.tokenizer`.
Byte-level: every UTF-8 string has an encoding, and decoding inverts it exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from bilens.core.errors import BilensError

TOKENIZER_FILE = "tokenizer.json"


def _library() -> Any:
    try:
        import tokenizers
    except ImportError as err:
        raise BilensError("tokenizer: the `tokenizers` package is missing; install it with "
                          "`pip install tokenizers` (a bilens dependency)") from err
    return tokenizers


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4096) -> Any:
    """A byte-level BPE with `vocab_size` entries trained on `texts`.

    Example:
        >>> tok = train_tokenizer(["the cat sat on the mat"] * 10, vocab_size=300)
        >>> tok.decode(tok.encode("the mat").ids)
        'the mat'
    """
    tk = _library()
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
        raise BilensError(f"vocab_size: expected an integer >= 257 (256 bytes plus merges), "
                          f"got {vocab_size!r}")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return tok


def encode(tokenizer: Any, texts: Sequence[str]) -> Int[Tensor, " n"]:
    """The texts' ids concatenated into one stream (int64), texts apart by a blank line."""
    parts = [t + "\n\n" for t in texts[:-1]] + list(texts[-1:])
    ids = [i for enc in tokenizer.encode_batch(parts) for i in enc.ids]
    return torch.tensor(ids, dtype=torch.int64)


def save_tokenizer(tokenizer: Any, directory: str | os.PathLike) -> None:
    tokenizer.save(str(Path(directory) / TOKENIZER_FILE))


def load_tokenizer(path: str | os.PathLike) -> Any:
    """Read a `tokenizer.json`; one clear error if it is not one."""
    tk = _library()
    try:
        return tk.Tokenizer.from_file(str(path))
    except Exception as err:  # the library raises its own exception type
        raise BilensError(f"tokenizer: {str(path)!r} is not a tokenizers JSON file ({err}); "
                          f"re-save it with tokenizer.save(path)") from err

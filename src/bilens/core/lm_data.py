"""Token data for the bilinear transformer (docs/spec.md §9), all offline.

| name           | source                                              | tokenizer        |
| -------------- | --------------------------------------------------- | ---------------- |
| `synthetic-lm` | generated (seeded): bigrams, skip-trigrams, induction | none (ids)     |
| `text`         | the King James Bible, Debian `bible-kjv` (4.3 MB)   | byte-level BPE   |
| `FILE`         | UTF-8 text, or `.safetensors`/`.npz` `tokens [N, T]` | checkpoint's/BPE |

Every sequence carries one token more than the model reads: rows are `[N, T+1]`, the model
reads `rows[:, :-1]` and is scored on `rows[:, 1:]`.

**Why the King James Bible.** Of the English prose in Debian's main archive it is the
largest single public-domain text (4.3 MB, 31,102 verses) in one small package, and its
text is fixed (package version 4.38), so every machine trains on the same bytes. Its
English is archaic and repetitive, which makes it learnable by small models in minutes;
`fortunes` (2.5 MB) is more modern but mixes verse, code and ASCII layout with prose. The
package stores the text compressed; its `bible` reader (same package) prints it.
`kjv_chapters` is the one preprocessing; `BILENS_DATA_DIR/kjv.txt` (as
`benchmarks/lm_table.py --export` writes it) replaces the package on a machine without it.
Held out: every 20th chapter (chapters 19, 39, ... in canonical order; 59 of 1,189).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from bilens.core.errors import BilensError
from bilens.core.synthetic_lm import synthetic_lm
from bilens.core.token_data import TokenData

LM_DATASETS = ("synthetic-lm", "text")
KJV_FILE = "kjv.txt"
HELD_OUT_EVERY = 20               # text: chapter c is held out when c % 20 == 19
FILE_HELD_OUT = 0.1               # FILE: the last 10% (of lines, or of rows) is held out


def windows(stream: Int[Tensor, " n"], seq_len: int) -> Int[Tensor, "m t1"]:
    """Non-overlapping rows of `seq_len + 1` tokens cut from `stream` (the rest dropped)."""
    m = len(stream) // (seq_len + 1)
    if m == 0:
        raise BilensError(f"data: {len(stream)} held-out tokens are fewer than one window of "
                          f"{seq_len + 1}; use a shorter --seq-len or more text")
    return stream[: m * (seq_len + 1)].view(m, seq_len + 1)


def load_lm_data(name: str, seq_len: int, tokenizer: Any = None, vocab_size: int = 4096,
                 seed: int = 0) -> TokenData:
    """Load `synthetic-lm`, `text` or a FILE, tokenized and split.

    Args:
        name: `synthetic-lm`, `text`, or a path (`.txt`-like UTF-8, `.safetensors`, `.npz`).
        seq_len: tokens the model reads per row (rows hold one more).
        tokenizer: tokenize text with this one; None trains a byte-level BPE on the
            training split (`vocab_size` entries).
        vocab_size: the BPE's size when one is trained.
        seed: seeds the synthetic draw (the rules themselves are fixed).

    Example:
        >>> data = load_lm_data("synthetic-lm", seq_len=32)
        >>> data.test.shape[1], sorted(data.rules)
        (33, ['bigram', 'induction', 'skip-trigram'])
    """
    if name == "synthetic-lm":
        return synthetic_lm(seq_len, seed)
    if name == "text":
        chapters = kjv_chapters()
        train = [c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
        test = [c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
        return _text_data("text", train, test, seq_len, tokenizer, vocab_size,
                          "King James Bible (Debian bible-kjv 4.38), verse numbers and chapter "
                          "headings dropped, one verse per line, chapters apart by a blank "
                          "line; every 20th chapter held out")
    path = Path(name)
    if not path.is_file():
        raise BilensError(f"dataset: {name!r} is neither {' nor '.join(LM_DATASETS)} nor a "
                          f"file; pass a UTF-8 text file or a .safetensors/.npz with tokens")
    if path.suffix in (".safetensors", ".npz"):
        return _token_file(path)
    text = read_text_file(path)
    lines = text.splitlines(keepends=True)
    cut = max(1, int(round(len(lines) * (1 - FILE_HELD_OUT)))) if len(lines) > 1 else 1
    train, test = "".join(lines[:cut]), "".join(lines[cut:]) or text
    return _text_data(str(path), [train], [test], seq_len, tokenizer, vocab_size,
                      f"UTF-8 text file; last {FILE_HELD_OUT:.0%} of lines held out")


def read_text_file(path: Path) -> str:
    """A text file's content; one clear error when it is empty or not UTF-8."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BilensError(f"dataset: {str(path)!r} is not UTF-8 (byte {err.start}: "
                          f"{raw[err.start:err.start + 1]!r}); convert it with iconv -t UTF-8"
                          ) from err
    if not text.strip():
        raise BilensError(f"dataset: {str(path)!r} is empty; pass a file with text in it")
    return text


def kjv_chapters() -> list[str]:
    """The King James Bible as 1,189 chapters, the one preprocessing of `text`.

    Reads `BILENS_DATA_DIR/kjv.txt` when present (the output of this function, chapters
    apart by a blank line), else runs the package's `bible` reader over Gen 1:1 - Rev 22:21
    with unlimited line width, drops chapter headings and verse numbers, and keeps one verse
    per line.
    """
    root = os.environ.get("BILENS_DATA_DIR")
    if root and (Path(root) / KJV_FILE).is_file():
        return (Path(root) / KJV_FILE).read_text(encoding="utf-8").split("\n\n")
    if shutil.which("bible") is None:
        raise BilensError("dataset 'text': the King James Bible is not installed; run "
                          "`sudo apt-get install bible-kjv` (setup.sh does), or point "
                          f"BILENS_DATA_DIR at a folder holding {KJV_FILE}")
    out = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"], capture_output=True,
                         text=True, check=True).stdout
    chapters: list[list[str]] = []
    for line in out.splitlines():
        if line.startswith("  "):                                  # "  12 And God said, ..."
            chapters[-1].append(line.strip().split(" ", 1)[1])
        elif line.strip():                                         # "Genesis 1"
            chapters.append([])
    return ["\n".join(verses) for verses in chapters]


def _text_data(name: str, train: list[str], test: list[str], seq_len: int, tokenizer: Any,
               vocab_size: int, preprocessing: str) -> TokenData:
    from bilens.core.tokenizer import encode, train_tokenizer

    if tokenizer is None:
        tokenizer = train_tokenizer(train, vocab_size)
    train_ids, test_ids = encode(tokenizer, train), encode(tokenizer, test)
    if len(train_ids) <= seq_len + 1:
        raise BilensError(f"dataset {name!r}: {len(train_ids)} training tokens, fewer than one "
                          f"row of {seq_len + 1}; use a shorter --seq-len or more text")
    return TokenData(name=name, train=train_ids, test=windows(test_ids, seq_len),
                     vocab_size=tokenizer.get_vocab_size(), tokenizer=tokenizer,
                     preprocessing=preprocessing)


def load_token_rows(path: str | os.PathLike) -> Int[Tensor, "n t"]:
    """`tokens [N, T]` (int64) from a `.safetensors` or `.npz` file (no pickle)."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                tokens = torch.from_numpy(np.asarray(f["tokens"]))
        else:
            from safetensors.torch import load_file
            tokens = load_file(str(path))["tokens"]
    except KeyError as err:
        raise BilensError(f"dataset: {str(path)!r} has no array 'tokens'; store the token ids "
                          f"as tokens [N, T] (int64)") from err
    except Exception as err:
        raise BilensError(f"dataset: cannot read {str(path)!r} ({type(err).__name__}: {err}); "
                          f"expected tokens [N, T] int64 in .safetensors or .npz") from err
    if tokens.ndim != 2 or tokens.dtype != torch.int64 or tokens.numel() == 0:
        raise BilensError(f"dataset: {str(path)!r}: tokens must be a non-empty int64 [N, T], "
                          f"got {tokens.dtype} {list(tokens.shape)}; use tokens.astype(int64)")
    if int(tokens.min()) < 0:
        raise BilensError(f"dataset: {str(path)!r}: token id {int(tokens.min())} is negative")
    return tokens


def _token_file(path: Path) -> TokenData:
    rows = load_token_rows(path)
    if len(rows) < 2:
        raise BilensError(f"dataset: {str(path)!r} holds {len(rows)} row; training needs at "
                          f"least 2 (the last {FILE_HELD_OUT:.0%} are held out)")
    cut = min(len(rows) - 1, max(1, int(round(len(rows) * (1 - FILE_HELD_OUT)))))
    return TokenData(name=str(path), train=rows[:cut], test=rows[cut:],
                     vocab_size=int(rows.max()) + 1,
                     preprocessing=f"token rows; last {FILE_HELD_OUT:.0%} of rows held out")

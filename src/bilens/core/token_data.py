"""`TokenData`: a tokenized sequence dataset split once into training and held-out rows
(docs/spec.md §9). Built by `bilens.core.lm_data.load_lm_data`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor


@dataclass
class TokenData:
    """A tokenized dataset, split once.

    Attributes:
        name: `synthetic-lm`, `text`, or the file's path.
        train: `[n]` one token stream (windows are drawn from it) or `[N, T+1]` rows.
        test: held-out rows `[N, T+1]`.
        vocab_size: the ids are in `[0, vocab_size)`.
        tokenizer: the `tokenizers.Tokenizer` that made the ids (None for synthetic/tokens).
        rules: `{rule: mask [N, T]}` on `test` (synthetic-lm only): the positions whose next
            token that rule makes predictable.
        preprocessing: one line saying what was done to the raw data.
    """

    name: str
    train: Int[Tensor, "..."]
    test: Int[Tensor, "n t1"]
    vocab_size: int
    tokenizer: Any = None
    rules: dict[str, Bool[Tensor, "n t"]] = field(default_factory=dict)
    preprocessing: str = ""

    def batch(self, gen: torch.Generator, batch_size: int, seq_len: int) -> Int[Tensor, "b t1"]:
        """`batch_size` training rows of `seq_len + 1` tokens, drawn with `gen`."""
        if self.train.ndim == 2:
            rows = self.train[torch.randint(len(self.train), (batch_size,), generator=gen)]
            return rows[:, : seq_len + 1]
        start = torch.randint(len(self.train) - seq_len - 1, (batch_size,), generator=gen)
        return self.train[start[:, None] + torch.arange(seq_len + 1)]

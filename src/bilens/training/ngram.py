"""The baselines every language-model result is shown against: a unigram and a bigram
model fitted by counting on the same training split (SPEC §9).

    unigram:  p(b)     = (c(b) + 1) / (N + V)                          (add-one)
    bigram:   p(b | a) = (c(a, b) + beta p(b)) / (c(a) + beta),  beta = 1  (interpolated
              with the unigram, so an unseen pair keeps the unigram's probability)

Counts run over consecutive pairs of the training stream (or within each training row).
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

BETA = 1.0


def _pairs(train: Int[Tensor, "..."]) -> tuple[Tensor, Tensor]:
    if train.ndim == 1:
        return train[:-1], train[1:]
    return train[:, :-1].reshape(-1), train[:, 1:].reshape(-1)


def ngram_losses(train: Int[Tensor, "..."], test: Int[Tensor, "n t1"],
                 vocab_size: int) -> dict[str, float]:
    """Held-out mean cross-entropy (nats) of the unigram and bigram models on `test` rows,
    scored on the same positions as the model (`test[:, 1:]` given `test[:, :-1]`).

    Example:
        >>> stream = torch.tensor([0, 1] * 50)
        >>> losses = ngram_losses(stream, torch.tensor([[0, 1, 0, 1]]), vocab_size=2)
        >>> losses["bigram"] < losses["unigram"]
        True
    """
    V = vocab_size
    uni = torch.bincount(train.reshape(-1), minlength=V).double()
    p_uni = (uni + 1) / (uni.sum() + V)                                      # [V]
    a, b = _pairs(train)
    pair = torch.bincount(a * V + b, minlength=V * V).double().view(V, V)    # c(a, b)
    prev, nxt = test[:, :-1].reshape(-1), test[:, 1:].reshape(-1)
    p_bi = (pair[prev, nxt] + BETA * p_uni[nxt]) / (pair.sum(1)[prev] + BETA)
    return {"unigram": float(-p_uni[nxt].log().mean()), "bigram": float(-p_bi.log().mean())}

"""The baselines every language-model result is shown against: a unigram and a bigram
model fitted by counting on the same training split (docs/spec.md §9).

    unigram:  p(b)     = (c(b) + 1) / (N + V)                         (add-one)
    bigram:   p(b | a) = (c(a, b) + beta p(b)) / (c(a) + beta)        (interpolated with the
              unigram, so an unseen pair keeps the unigram's probability)

Counts run over consecutive pairs of the training stream (or within each training row).
`beta` is chosen on the training split alone: from `BETAS`, the value whose bigram fitted on
the first 90% of the training data predicts the last 10% best; the counts are then refit on
all of it. The held-out split is never looked at.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

BETAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def _pairs(data: Int[Tensor, "..."]) -> tuple[Tensor, Tensor]:
    if data.ndim == 1:
        return data[:-1], data[1:]
    return data[:, :-1].reshape(-1), data[:, 1:].reshape(-1)


def _fit(train: Tensor, V: int) -> tuple[Tensor, Tensor]:
    """`(p_uni [V], pair counts [V, V])`."""
    uni = torch.bincount(train.reshape(-1), minlength=V).double()
    a, b = _pairs(train)
    pair = torch.bincount(a * V + b, minlength=V * V).double().view(V, V)    # c(a, b)
    return (uni + 1) / (uni.sum() + V), pair


def _bigram_loss(p_uni: Tensor, pair: Tensor, data: Tensor, beta: float) -> float:
    prev, nxt = _pairs(data)
    p = (pair[prev, nxt] + beta * p_uni[nxt]) / (pair.sum(1)[prev] + beta)
    return float(-p.log().mean())


def choose_beta(train: Int[Tensor, "..."], vocab_size: int) -> float:
    """The bigram's `beta`, picked by fitting on 90% of `train` and scoring the other 10%."""
    cut = max(1, int(0.9 * len(train)))
    fit, dev = train[:cut], train[cut:]
    if len(dev) == 0 or (dev.ndim == 1 and len(dev) < 2):
        return 1.0
    p_uni, pair = _fit(fit, vocab_size)
    return min(BETAS, key=lambda b: _bigram_loss(p_uni, pair, dev, b))


def ngram_losses(train: Int[Tensor, "..."], test: Int[Tensor, "n t1"], vocab_size: int,
                 beta: float | None = None) -> dict[str, float]:
    """Held-out mean cross-entropy (nats) of the unigram and bigram models on `test` rows,
    scored on the same positions as the model (`test[:, 1:]` given `test[:, :-1]`).

    Args:
        train: the training split, `[n]` stream or `[N, T+1]` rows.
        test: held-out rows.
        vocab_size: `V`.
        beta: the bigram's interpolation weight; None chooses it (`choose_beta`).

    Returns:
        `{"unigram": loss, "bigram": loss, "beta": beta}`.

    Example:
        >>> stream = torch.tensor([0, 1] * 50)
        >>> losses = ngram_losses(stream, torch.tensor([[0, 1, 0, 1]]), vocab_size=2)
        >>> losses["bigram"] < losses["unigram"]
        True
    """
    beta = choose_beta(train, vocab_size) if beta is None else beta
    p_uni, pair = _fit(train, vocab_size)
    nxt = test[:, 1:].reshape(-1)
    return {"unigram": float(-p_uni[nxt].log().mean()),
            "bigram": _bigram_loss(p_uni, pair, test, beta), "beta": beta}

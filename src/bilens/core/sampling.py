"""Continuing a prompt with the bilinear transformer: greedy or temperature sampling."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from bilens.core.errors import BilensError
from bilens.core.models.transformer import BilinearTransformer, check_tokens


@torch.no_grad()
def generate(model: BilinearTransformer, prompt: Int[Tensor, "batch seq"], n_tokens: int,
             temperature: float = 0.0, seed: int = 0) -> Int[Tensor, "batch seq_plus_n"]:
    """`prompt` followed by `n_tokens` new tokens.

    Args:
        model: the transformer.
        prompt: token ids `[B, T]`; when prompt and continuation outgrow `n_ctx`, the model
            reads the last `n_ctx` tokens.
        n_tokens: how many tokens to add.
        temperature: 0 takes the arg-max (greedy); above 0 samples from
            `softmax(logits / temperature)`.
        seed: seeds the sampling.

    Example:
        >>> generate(model, torch.tensor([[1, 2, 3]]), 5).shape          # doctest: +SKIP
        torch.Size([1, 8])
    """
    cfg = model.config
    check_tokens(prompt, cfg.vocab_size, cfg.n_ctx if prompt.shape[1] <= cfg.n_ctx else 10**9,
                 "prompt")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
        raise BilensError(f"--tokens: expected an integer >= 0, got {n_tokens!r}")
    if not temperature >= 0:
        raise BilensError(f"--temperature: expected a number >= 0, got {temperature!r}")
    gen = torch.Generator(device=model.device).manual_seed(seed)
    x = prompt.to(model.device)
    for _ in range(n_tokens):
        logits = model(x[:, -cfg.n_ctx:])[:, -1].double()                      # [B, vocab]
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = (logits / temperature).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
        x = torch.cat([x, nxt], dim=1)
    return x


def continue_text(model: BilinearTransformer, prompt: str, n_tokens: int,
                  temperature: float = 0.0, seed: int = 0) -> str:
    """The prompt's continuation as text, through `model.tokenizer`."""
    tok: Any = getattr(model, "tokenizer", None)
    if tok is None:
        raise BilensError("sample: this checkpoint has no tokenizer.json; pass token ids "
                          "with --ids instead of text")
    ids = tok.encode(prompt).ids
    if not ids:
        raise BilensError("--prompt: the prompt is empty; pass some text to continue")
    out = generate(model, torch.tensor([ids]), n_tokens, temperature, seed)
    return tok.decode(out[0, len(ids):].tolist())

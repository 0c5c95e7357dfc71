"""The direct path of the bilinear transformer of docs/spec.md §9, per position (docs/spec.md §10).

Layer `l`'s MLP writes `D_l z_l` into the residual at position `t`; on the direct path it
reaches the logits at `t` through later residual additions only, skipping every later
attention layer and MLP, with every norm's statistics frozen:

- pre-norm: the residual passes only the final norm, `N_f` (norm index `2L`);
- post-norm: it passes layer `l`'s MLP norm and every later norm, attention and MLP norms
  alike (indices `2l+1 .. 2L-1`); the head then reads `h` itself.

Each norm is `diag(gamma) P` (LayerNorm's centering) and a per-(input, position) `1/s`, so
the read-out is `w = M_first^T ... M_last^T W^T c` with every `s = 1` and the statistic
factor is the product of `1/s` at that position. Positions are flattened into inputs: a
`FlatRun` is a `TransformerRun` viewed as `N * T` independent inputs, which is all the
faithfulness code of `bilens.analysis.eigen_faithfulness` needs (the last layer's output at
`t` reaches only the logits at `t`, so its live tail is per position as well).
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.analysis.interaction import fold_norm, map_through_norm
from bilens.core.errors import BilensError
from bilens.core.models.transformer import BilinearTransformer, TransformerRun, check_tokens


@dataclass
class FlatRun:
    """A `TransformerRun` with batch and position flattened into one input axis."""

    logits: Float[Tensor, "input vocab"]
    resid: Float[Tensor, "input norm d_model"]
    scale: Float[Tensor, "input norm"]
    u: Float[Tensor, "input layer d_model"]      # (TransformerRun.u is [B, layer, T, d])
    embed: Float[Tensor, "input d_model"]        # E[x_t]

    @classmethod
    def of(cls, run: TransformerRun, embed: Tensor) -> FlatRun:
        B, T = run.logits.shape[:2]
        return cls(logits=run.logits.reshape(B * T, -1),
                   resid=run.resid.reshape(B * T, *run.resid.shape[2:]),
                   scale=run.scale.reshape(B * T, -1),
                   u=run.u.transpose(1, 2).reshape(B * T, run.u.shape[1], -1),
                   embed=embed.reshape(B * T, -1))


class TransformerDirectPath:
    """The `DirectPath` (`bilens.analysis.direct_path`) of docs/spec.md §9's transformer."""

    sequence = True

    def __init__(self, model: BilinearTransformer):
        if model.dtype != torch.float64:                 # a float64 copy: exact eigenvectors
            tokenizer = model.tokenizer
            model = copy.deepcopy(model).double()
            model.tokenizer = tokenizer
        self.model = model
        cfg = model.config
        self.n_layers, self.d_model, self.n_out = cfg.n_layers, cfg.d_model, cfg.vocab_size
        self.d_in, self.device = cfg.vocab_size, model.device
        self.post = cfg.norm_position == "post"
        self.tokenizer = model.tokenizer

    def path_norms(self, l: int) -> list[int]:
        """Norm indices on layer `l`'s MLP direct path, first to last."""
        return list(range(2 * l + 1, 2 * self.n_layers)) if self.post else [2 * self.n_layers]

    def _embed_norms(self) -> list[int]:
        """Norm indices on the embedding's direct path to the logits."""
        return list(range(2 * self.n_layers)) if self.post else [2 * self.n_layers]

    def weights(self, l: int) -> tuple[Tensor, Tensor, Tensor]:
        layer = self.model.layers[l]
        return layer.L.detach(), layer.R.detach(), layer.D.detach()

    def _fold(self, norms: list[int], c: Tensor) -> Tensor:
        w = c.to(self.model.dtype) @ self.model.head.weight.detach()        # W^T c  [T, d]
        for i in reversed(norms):                                            # last norm first
            w = fold_norm(self.model.norm(i), w)
        return w

    def readout(self, l: int, c: Tensor) -> Tensor:
        return self._fold(self.path_norms(l), c)

    def embed_readout(self, c: Tensor) -> Tensor:
        """The read-out of the embedding `E[x_t]` on its direct path (every `s = 1`)."""
        return self._fold(self._embed_norms(), c)

    def input_map(self, l: int) -> Float[Tensor, "d_model vocab"]:
        """Each token's embedding on its direct path to layer `l`'s input `u` (the gains and
        centering of the norms before `u` folded in, every `s = 1`), one column per token."""
        E = self.model.embed.weight.detach().T                              # [d_model, vocab]
        before = range(2 * l + 1) if self.post else [2 * l + 1]
        for i in before:
            E = map_through_norm(self.model.norm(i), E)
        return E

    def run(self, tokens: Tensor) -> FlatRun:
        cfg = self.model.config
        tokens = check_tokens(tokens, cfg.vocab_size, cfg.n_ctx).to(self.device)
        with torch.no_grad():
            return FlatRun.of(self.model.run(tokens), self.model.embed(tokens))

    def inputs(self, run: FlatRun, l: int) -> Tensor:
        return run.u[:, l]

    def factor(self, run: FlatRun, l: int) -> Tensor:
        return (1.0 / run.scale[:, self.path_norms(l)]).prod(-1)

    def embed_factor(self, run: FlatRun) -> Tensor:
        return (1.0 / run.scale[:, self._embed_norms()]).prod(-1)

    def tail(self, run: FlatRun, offset: Tensor) -> Tensor:
        """The logits when `offset` is added to the last MLP's output, every norm live."""
        r = run.resid[:, -1] + offset              # pre: N_f's input; post: the last MLP norm's
        y = self.model.norm(run.scale.shape[1] - 1)(r)[0]
        return y @ self.model.head.weight.T


def token_id(spec: str, tokenizer: object, vocab_size: int) -> int:
    """`token:STR` -> its one token id, through `tokenizer`; a `BilensError` unless the
    string encodes to exactly one token in range."""
    text = spec.partition(":")[2]
    if tokenizer is None:
        raise BilensError(f"target: {spec!r} needs the checkpoint's tokenizer and this model "
                          f"has none; pass class:C with a token id")
    ids = tokenizer.encode(text).ids
    if len(ids) != 1:
        raise BilensError(f"target: {text!r} is {len(ids)} tokens {ids}, not one; pass a "
                          f"string that is a single token, or class:C with a token id")
    if not 0 <= ids[0] < vocab_size:
        raise BilensError(f"target: {text!r} is token {ids[0]}, out of range [0, {vocab_size})")
    return int(ids[0])

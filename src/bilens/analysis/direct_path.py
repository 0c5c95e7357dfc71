"""The direct path of a model family: what weight-based decomposition reads from a model.

A bilinear layer's output `D_l z_l` reaches the logits along the **direct path** (residual
additions only, every norm's statistics frozen, later bilinear layers not reading it) as
one linear map, `logits = W M_last ... M_first (D_l z_l) / prod s`, where each norm on the
way is `M = diag(gamma) P` (LayerNorm's centering `P = I - 11^T/d`, the identity for RMS)
and a per-input scalar `1/s` (docs/spec.md §10). Pulling a target `c . logits` back through it with
every `s = 1` gives the read-out direction `w = M_first^T ... M_last^T W^T c`, and the
product of the `1/s` is the input's **statistic factor**.

Which norms are on the path depends on the layout (docs/spec.md §1):

- post-norm: layer `l` writes into `r_l`, which passes norms `l, l+1, ..., n_layers - 1`;
- pre-norm: every layer writes into the residual, which passes only the final norm.

`DirectPath` is what `bilens.analysis.decompose` needs from a model family; the MLP family
of docs/spec.md §1 implements it here (`MLPDirectPath`); the transformer of §9 implements
the same methods per position, skipping attention on the direct path
(`bilens.analysis.transformer_path.TransformerDirectPath`); `direct_path` dispatches.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import copy
from typing import Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.analysis.interaction import fold_norm, map_through_norm
from bilens.core.errors import BilensError
from bilens.core.models.mlp import BilinearNet, Run

__all__ = ["DirectPath", "MLPDirectPath", "direct_path", "fold_norm"]


class DirectPath(Protocol):
    """The model-family interface of weight-based decomposition (see the module docstring)."""

    n_layers: int
    d_model: int
    n_out: int
    d_in: int
    device: torch.device

    def weights(self, l: int) -> tuple[Tensor, Tensor, Tensor]:
        """Layer `l`'s `(L [d_hidden, d_model], R [d_hidden, d_model], D [d_model, d_hidden])`."""
        ...

    def readout(self, l: int, c: Float[Tensor, "target n_out"]) -> Float[Tensor, "target d_model"]:
        """`w` for each target direction `c`: what `D_l z_l` is read by, every `s = 1`."""
        ...

    def input_map(self, l: int) -> Float[Tensor, "d_model d_in"]:
        """The embedding's direct path to layer `l`'s input `u` (every `s = 1`)."""
        ...

    def run(self, x: Tensor) -> Run: ...

    def inputs(self, run: Run, l: int) -> Float[Tensor, "batch d_model"]:
        """Layer `l`'s input `u` on this run."""
        ...

    def factor(self, run: Run, l: int) -> Float[Tensor, " batch"]:
        """The product of `1/s` of the norms on layer `l`'s direct path, per input."""
        ...

    def embedding_term(self, run: Run) -> Float[Tensor, "batch d_model"]:
        """What the embedding writes where layer 0 writes (`h0 = E x`)."""
        ...

    def tail(self, run: Run, offset: Float[Tensor, "*k batch d_model"]) -> Tensor:
        """The logits when `offset` is added to the last layer's output, every norm live."""
        ...


class MLPDirectPath:
    """The direct path of the residual MLP network of docs/spec.md §1."""

    def __init__(self, model: BilinearNet):
        if model.dtype != torch.float64:                 # a float64 copy: exact eigenvectors
            model = copy.deepcopy(model).double()
        self.model = model
        cfg = model.config
        self.n_layers, self.d_model, self.n_out = cfg.n_layers, cfg.d_model, cfg.n_out
        self.d_in, self.device = cfg.d_in, model.device
        self.post = cfg.norm_position == "post"

    def _path_norms(self, l: int) -> list[int]:
        """Indices of the norms on layer `l`'s direct path, first to last."""
        return list(range(l, self.n_layers)) if self.post else [self.n_layers]

    def weights(self, l: int) -> tuple[Tensor, Tensor, Tensor]:
        layer = self.model.layers[l]
        return layer.L.detach(), layer.R.detach(), layer.D.detach()

    def readout(self, l: int, c: Tensor) -> Tensor:
        w = c.to(self.model.dtype) @ self.model.head.weight.detach()        # W^T c  [T, d]
        for i in reversed(self._path_norms(l)):                              # last norm first
            w = fold_norm(self.model.norm(i), w)
        return w

    def input_map(self, l: int) -> Tensor:
        E = self.model.embed.weight.detach()                                 # [d_model, d_in]
        before = range(l) if self.post else [l]                              # norms before u_l
        for i in before:
            E = map_through_norm(self.model.norm(i), E)
        return E

    def run(self, x: Tensor) -> Run:
        with torch.no_grad():
            return self.model.run(x.to(self.model.device, self.model.dtype))

    def inputs(self, run: Run, l: int) -> Tensor:
        return run.u[:, l]

    def factor(self, run: Run, l: int) -> Tensor:
        return (1.0 / run.scale[:, self._path_norms(l)]).prod(-1)

    def embedding_term(self, run: Run) -> Tensor:
        return run.u[:, 0] if self.post else run.resid[:, 0]

    def tail(self, run: Run, offset: Tensor) -> Tensor:
        r = run.resid[:, -1] + offset                    # post: r_{L-1}; pre: h_L (N_f's input)
        y = self.model.norm(run.scale.shape[1] - 1)(r)[0]
        return y @ self.model.head.weight.T


def direct_path(model: object) -> DirectPath:
    """The `DirectPath` of a model (docs/spec.md §1's MLP network or §9's transformer), over
    a float64 copy of the model unless it is float64 already.

    Args:
        model: a `BilinearNet` or a `BilinearTransformer`.

    Returns:
        Its `DirectPath`.
    """
    from bilens.core.models.transformer import BilinearTransformer

    if isinstance(model, BilinearNet):
        return MLPDirectPath(model)
    if isinstance(model, BilinearTransformer):
        from bilens.analysis.transformer_path import TransformerDirectPath

        return TransformerDirectPath(model)
    raise BilensError(f"model: decomposition supports the MLP network of docs/spec.md §1 "
                      f"(bilens.BilinearNet) and the transformer of docs/spec.md §9 "
                      f"(bilens.BilinearTransformer), got {type(model).__name__}; "
                      f"load a checkpoint with bilens.load(DIR)")

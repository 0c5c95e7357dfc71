"""The interaction matrix of a bilinear layer and its sorted eigendecomposition (docs/spec.md §10).

    Q(w) = sym(L^T diag(D^T w) R),   sym(A) = (A + A^T) / 2,   w . D z = u^T Q(w) u

`interaction_matrix` takes a batch of read-out directions `w` (one per target, or one per
input for the live-norm linearization); `sorted_eigh` orders the eigenpairs by `|lambda|`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.core.norms import Norm


def fold_norm(norm: Norm, w: Float[Tensor, "*any d_model"]) -> Float[Tensor, "*any d_model"]:
    """`M^T w` for one norm with `s = 1`: `gamma * w`, then centred for LayerNorm."""
    if norm.kind == "none":
        return w
    w = w * norm.weight.detach().to(w.dtype)
    return w - w.mean(-1, keepdim=True) if norm.kind == "layer" else w


def map_through_norm(norm: Norm, E: Float[Tensor, "d_model n"]) -> Float[Tensor, "d_model n"]:
    """`M E` for one norm with `s = 1` (each column of `E` a vector entering the norm):
    centred for LayerNorm, then `gamma *` (the other side of `fold_norm`)."""
    if norm.kind == "layer":
        E = E - E.mean(0, keepdim=True)
    if norm.kind != "none":
        E = norm.weight.detach()[:, None] * E
    return E


def interaction_matrix(
    L: Float[Tensor, "d_hidden d_model"],
    R: Float[Tensor, "d_hidden d_model"],
    D: Float[Tensor, "d_model d_hidden"],
    w: Float[Tensor, "target d_model"],
) -> Float[Tensor, "target d_model d_model"]:
    """`Q(w) = sym(L^T diag(D^T w) R)` for each row of `w`."""
    g = w @ D                                                   # D^T w      [T, H]
    A = torch.einsum("hi,th,hj->tij", L, g, R)                  # L^T diag(g) R  [T, d, d]
    return (A + A.transpose(1, 2)) / 2


def sorted_eigh(Q: Float[Tensor, "*batch d d"]) -> tuple[Tensor, Tensor]:
    """`eigh`, sorted by `|lambda|` descending; each eigenvector's sign is fixed so that its
    largest-magnitude entry is positive (a deterministic output)."""
    lam, V = torch.linalg.eigh(Q)
    order = lam.abs().argsort(dim=-1, descending=True, stable=True)
    lam = lam.gather(-1, order)
    V = V.gather(-1, order.unsqueeze(-2).expand_as(V))
    peak = V.gather(-2, V.abs().argmax(-2, keepdim=True))      # [*, 1, d]
    return lam, V * torch.where(peak < 0, -1.0, 1.0).to(V.dtype)

"""The value `b` an ablated channel takes (docs/spec.md §3): zero, the channel's mean over a
reference set, or the channel's value on another input.

Attribution (`predicted = (b - z) * g`) and ablation (`z_{l,k} := b`) share this, so they
always agree on what "ablating" means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.core.errors import BilensError, check_inputs

if TYPE_CHECKING:
    from bilens.core.models.mlp import BilinearNet

BASELINE_HELP = ("'zero' | 'mean' (over reference=...) | a tensor [n_layers, d_hidden] or "
                 "[batch, n_layers, d_hidden] of z values | from_inputs(model, other_inputs)")


@torch.no_grad()
def from_inputs(model: BilinearNet, other: Float[Tensor, "batch d_in"]) -> Tensor:
    """The channels' values on other inputs: `baseline=from_inputs(model, x_other)` ablates
    each channel of input `i` to its value on `x_other[i]` (activation patching)."""
    check_inputs(other, model.config.d_in, "other")
    return model.run(other.to(device=model.device, dtype=model.dtype), check=False).z


@torch.no_grad()
def resolve_baseline(
    baseline: str | Tensor | None,
    model: BilinearNet,
    z: Float[Tensor, "batch layer d_hidden"],
    reference: Float[Tensor, "ref d_in"] | None = None,
) -> Float[Tensor, "batch layer d_hidden"]:
    """Turn a baseline spec into `b` with the shape of `z`.

    Args:
        baseline: see `BASELINE_HELP`; None means "zero".
        model: the network (for "mean").
        z: the clean activations `[B, n_layers, d_hidden]`.
        reference: inputs whose mean activation defines "mean"; required for it.

    Returns:
        `b`, `[B, n_layers, d_hidden]`, same dtype and device as `z`.
    """
    shape = tuple(z.shape)
    if baseline is None or (isinstance(baseline, str) and baseline == "zero"):
        return torch.zeros_like(z)
    if isinstance(baseline, str) and baseline == "mean":
        if reference is None:
            raise BilensError("baselines='mean' needs reference=... (inputs [N, d_in] whose mean "
                              "activation is the baseline, e.g. training inputs)")
        check_inputs(reference, model.config.d_in, "reference")
        ref = reference.to(device=z.device, dtype=z.dtype)
        total = torch.zeros(shape[1:], dtype=z.dtype, device=z.device)
        for chunk in ref.split(4096):
            total += model.run(chunk, check=False).z.sum(0)
        return (total / ref.shape[0]).expand(shape).clone()
    if isinstance(baseline, Tensor):
        b = baseline.to(device=z.device, dtype=z.dtype)
        if tuple(b.shape) == shape[1:]:
            b = b.expand(shape)
        if tuple(b.shape) != shape:
            raise BilensError(f"baselines: a tensor must have shape {list(shape[1:])} or "
                              f"{list(shape)} (z values), got {list(b.shape)}")
        if not torch.isfinite(b).all():
            raise BilensError("baselines: contains NaN or inf")
        return b.clone()
    raise BilensError(f"baselines: unknown {baseline!r}; expected {BASELINE_HELP}")

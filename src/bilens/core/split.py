"""Float32 factors as two halves, for products at float32 accuracy on tensor cores.

`x = x_hi + x_lo` with both halves exact in TF32 (10 mantissa bits each), or, scaled by a
power of two, in float16; `x @ w ~ x_hi w_hi + x_lo w_hi + x_hi w_lo` (the dropped
`x_lo w_lo` is ~2^-22 relative). Plain torch: the eager 3xTF32 steps
(`ablation._engine.steps`) round with `round_tf32`, and the ablation's Triton GEMMs take
their weights from `split_weight` (`ablation._engine.triton_ops`, `plan`); the kernels
split their activations in registers the same way (`core.triton_gemm._split`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


def round_tf32(x: Tensor) -> Tensor:
    """Round float32 `x` to the nearest TF32 value (10 mantissa bits); exact in TF32.

    Example:
        >>> x = torch.tensor([1.0 + 2.0 ** -12])
        >>> round_tf32(x).item(), (x - round_tf32(x)).item() == 2.0 ** -12
        (1.0, True)
    """
    bits = x.view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32)


class Split(NamedTuple):
    """A weight as two halves and the power of two it was scaled by (1 for TF32)."""

    hi: Tensor
    lo: Tensor
    scale: float


def split_weight(w: Tensor, f16: bool = False) -> Split:
    """`w` as `hi + lo`, both exact in TF32 (float32 storage), or, with `f16`, both float16
    after scaling `w` by a power of two that puts `max|w|` in `[2^14, 2^15)`."""
    w = w.contiguous()
    if not f16:
        hi = round_tf32(w)
        return Split(hi, round_tf32(w - hi).contiguous(), 1.0)
    top = w.abs().max().item()
    scale = 2.0 ** (14 - math.floor(math.log2(top))) if top > 0 else 1.0
    ws = w * scale
    hi = ws.half()
    return Split(hi, (ws - hi.float()).half().contiguous(), scale)

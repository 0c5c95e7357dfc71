"""The one exception bilens raises for bad input, and the checks that raise it.

Every message names the argument, what it got, what was expected and the fix, so the
CLI can print it as a single line and exit non-zero.
"""

from __future__ import annotations

import torch
from torch import Tensor


class BilensError(ValueError):
    """Bad input to bilens: the message says what was wrong and how to fix it."""


def check_inputs(x: Tensor, d_in: int, name: str = "inputs") -> Tensor:
    """Validate a batch of model inputs before any work is done.

    Args:
        x: the batch, expected `[B, d_in]`; a single `[d_in]` vector is not promoted.
        d_in: the model's input width.
        name: the argument's name, for the message.

    Returns:
        `x` unchanged.
    """
    if not isinstance(x, Tensor):
        raise BilensError(f"{name}: expected a torch.Tensor of shape [batch, {d_in}], got "
                          f"{type(x).__name__}; convert with torch.as_tensor(...)")
    if x.ndim != 2 or x.shape[1] != d_in:
        hint = " (add a batch axis: x.unsqueeze(0))" if x.ndim == 1 and x.shape[0] == d_in else ""
        raise BilensError(f"{name}: expected shape [batch, {d_in}], got {list(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise BilensError(f"{name}: the batch is empty; pass at least one input")
    if not x.is_floating_point():
        raise BilensError(f"{name}: expected a floating-point tensor, got {x.dtype}; "
                          f"use x.float()")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise BilensError(f"{name}: contains NaN or inf (rows {bad}...); clean the data first")
    return x


def check_fields(obj: object, prefix: str, positive: tuple[str, ...] = (),
                 nonnegative: tuple[str, ...] = (), fractions: tuple[str, ...] = ()) -> None:
    """The field checks of bilens's config dataclasses, one line each on failure.

    Args:
        obj: the dataclass instance.
        prefix: the name the message gives it (`config`, `train`).
        positive: fields that must be integers >= 1 (not bools).
        nonnegative: fields that must be finite numbers >= 0.
        fractions: fields that must lie in `[0, 1)`.
    """
    import math

    for name in positive:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BilensError(f"{prefix}.{name}: expected a positive integer, got {value!r}")
    for name in nonnegative:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise BilensError(f"{prefix}.{name}: expected a finite number >= 0, got {value!r}")
    for name in fractions:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise BilensError(f"{prefix}.{name}: expected a fraction in [0, 1), got {value!r}")


def check_choice(value: object, choices: tuple[str, ...], name: str) -> None:
    """Raise unless `value` is one of `choices`."""
    if value not in choices:
        raise BilensError(f"{name}: expected one of {choices}, got {value!r}")

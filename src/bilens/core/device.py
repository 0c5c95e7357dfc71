"""Which torch device a `--device` string names (`"auto"`: CUDA when there is one), and
whether Triton is there for the GPU kernels."""

from __future__ import annotations

import torch

from bilens.core.errors import BilensError


def resolve_device(device: str) -> torch.device:
    """`"auto"` -> CUDA when available, else CPU; anything else as torch reads it.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise BilensError(f"device: cannot parse {device!r}; use auto, cpu or cuda") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BilensError(f"device: {device!r} asked for but CUDA is not available; use "
                          f"--device cpu")
    return dev


def triton_available() -> bool:
    """Whether Triton can be imported (CUDA builds of torch ship it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True

"""Which backend runs the exhaustive ablation's steps, chosen explicitly.

| backend   | elementwise steps       | large matmuls                         | devices    |
| --------- | ----------------------- | ------------------------------------- | ---------- |
| `eager`   | plain torch ops         | cuBLAS / CPU BLAS (`fp32`, `3xtf32`)  | CPU, CUDA  |
| `compile` | `torch.compile`d, fused | cuBLAS (`fp32`, `3xtf32`)             | CUDA       |
| `triton`  | fused into the GEMMs    | Triton GEMMs (`3xtf32`, `3xfp16`)     | CUDA + Triton |

In the transformer's node oracle `triton` also runs the live attention's change as one
Triton kernel (`_engine/triton_attention.py`; its products 3xTF32 at either precision).

The default is `eager` with `fp32` products on every device: exact to float32 rounding and
with no compile step. On an H200, `backend="triton", precision="3xfp16"` is the fastest path
measured (docs/benchmarks.md), after a one-time compile of each new shape. A choice the
device cannot run falls back to the nearest one that it can, with one warning that says
why; a combination that makes no sense (`3xfp16` without Triton) is an error.
"""

from __future__ import annotations

import warnings

import torch

from bilens.core.device import triton_available
from bilens.core.errors import BilensError

BACKENDS = ("eager", "compile", "triton")
PRECISIONS = ("fp32", "3xtf32", "3xfp16")
DEFAULT_BACKEND = "eager"


def fallback(message: str) -> None:
    """Say once (per call site, Python's default warning filter) that a backend fell back."""
    warnings.warn(f"bilens: {message}", RuntimeWarning, stacklevel=3)


def resolve_backend(backend: str | None, precision: str | None, device: torch.device,
                    dtype: torch.dtype) -> tuple[str, str]:
    """The `(backend, precision)` that will run, from the user's choice and the device.

    Args:
        backend: `"eager"`, `"compile"`, `"triton"`, or None for the default (`"eager"`).
        precision: `"fp32"`, `"3xtf32"`, `"3xfp16"`, or None: `"3xfp16"` for `"triton"`,
            else `"fp32"`.
        device, dtype: where and in what the model runs.

    Returns:
        The backend and precision to use.
    """
    if backend is not None and backend not in BACKENDS:
        raise BilensError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
    if precision is not None and precision not in PRECISIONS:
        raise BilensError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    backend = backend or DEFAULT_BACKEND
    precision = precision or ("3xfp16" if backend == "triton" else "fp32")
    if backend == "triton" and precision == "fp32":
        raise BilensError("precision: backend='triton' runs split products; pass "
                          "precision='3xtf32' or '3xfp16' (or backend='compile' for fp32)")
    if precision == "3xfp16" and backend != "triton":
        raise BilensError("precision: '3xfp16' exists only as Triton GEMMs; pass "
                          "backend='triton' (or precision='3xtf32')")
    if device.type != "cuda":
        if (backend, precision) != ("eager", "fp32"):
            fallback(f"backend={backend!r}, precision={precision!r} need CUDA; the ablation "
                     f"runs eager with fp32 products on {device.type}")
        return "eager", "fp32"
    if dtype != torch.float32 and precision != "fp32":
        fallback(f"precision={precision!r} splits float32 products; a {dtype} model runs "
                 f"its own precision with backend='compile'")
        return "compile", "fp32"
    if backend == "triton" and not triton_available():
        fallback("backend='triton' needs Triton, which is not installed; running "
                 "backend='compile' with 3xtf32 cuBLAS products")
        return "compile", "3xtf32"
    return backend, precision

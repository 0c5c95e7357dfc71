"""The Triton pieces every split-product GEMM of bilens is built from.

The exhaustive ablation's kernels (`ablation._engine.triton_ops`) and `renorm`'s closed form
(`attribution.triton_renorm`) share them: the three products of halves (`_dot3`, see
`core.split`), a tile's rows and columns (`_tile`), the float16 scales (`_pow2_*`), the
autotune shapes and their pruning by precision, and the on-disk cache of the winners.

Import this module only where Triton is installed (it is on CUDA builds of torch;
`core.device.triton_available` says whether it is).
"""

from __future__ import annotations

import inspect
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

try:                                       # the base class of every Triton error (3.x)
    from triton.errors import TritonError
    TRITON_ERRORS: tuple[type[Exception], ...] = (TritonError,)
except ImportError:                        # older Triton: what compiling or launching raises
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources
    TRITON_ERRORS = (CompilationError, OutOfResources)


def _configs(shapes):
    """Autotune configs from `(shapes tried in both precisions, shapes for float16 only)`,
    each shape `(BM, BN, BK, warps, stages)`; under the interpreter the first shape alone."""
    both, f16_only = shapes
    if os.environ.get("TRITON_INTERPRET") == "1":     # the CPU interpreter cannot time configs
        both, f16_only = both[:1], []
    configs = []
    for f16, group in ((False, both), (True, f16_only)):
        for bm, bn, bk, w, s in group:
            configs.append(triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w,
                                         num_stages=s))
            if f16:
                _F16_ONLY.add(id(configs[-1]))
    return configs


# The configs tried for float16 halves only, by identity (the autotuners `_configs` feeds hold
# them for the process's life, and `_prune` is handed those same objects). Not an attribute of the
# Config: Triton rebuilds a Config from its attributes when it reads cached winners from disk
# (`cache_results`), and an extra one made that raise (seen on the H200, Triton of torch 2.11).
# Not by value either: Configs compare by value, and shapes recur across the kernels' lists.
_F16_ONLY: set[int] = set()


def f16_only(config) -> bool:
    """Whether an autotune shape is tried for float16 halves only."""
    return id(config) in _F16_ONLY


def configs_for(configs: list, f16: bool) -> list:
    """The autotune shapes tried for one precision."""
    return [c for c in configs if f16 or not f16_only(c)]


def _prune(configs, named_args, **kwargs):
    return configs_for(configs, bool(kwargs.get("F16", named_args.get("F16", False))))


_PRUNE = {"early_config_prune": _prune}
# The winners are kept in Triton's cache directory (`TRITON_CACHE_DIR`, ~/.triton by
# default) where this Triton can (3.2 and later): a later process on the same GPU skips
# the benchmarking of every shape (each took 1-11 s of a first run's 142 s on the H200).
_TUNE = ({"cache_results": True}
         if "cache_results" in inspect.signature(triton.autotune).parameters else {})


def max_slot(zeroed: Tensor | None, device: torch.device) -> Tensor:
    """A one-element float32 zero for a kernel's `atomic_max` of its output: `zeroed` if the
    caller hands one (an element of its zeroed scratch), else a new one."""
    return torch.zeros(1, device=device, dtype=torch.float32) if zeroed is None else zeroed


def amax(x: Tensor) -> Tensor:
    """`max|x|` as a one-element float32 tensor on the device (no host sync; one kernel)."""
    return torch.linalg.vector_norm(x, float("inf")).reshape(1).float()


# Every product is written transposed, `acc^T [BN, BM] = W [BN, BK] @ X^T [BK, BM]`: the
# weight tile is the left operand, read by the tensor cores straight from shared memory, and
# the activation, split in registers, the right one. Measured on the H200
# (`benchmarks/triton_gemm.py`): 255-270 TFLOP/s of TF32 work this way, 144-150 with the
# split activation as the left operand, 234-242 for cuBLAS on pre-split factors.
#
# F16 (precision "3xfp16"): the halves are float16, which the tensor cores multiply twice as
# fast as TF32 and with the same 11 significant bits. float16 has little range, so every
# operand is scaled by a power of two (exact) that puts its largest entry just under 2^15:
# weights once (`split_weight`), activations per call from their max (`amax`, or an
# `atomic_max` in the epilogue that makes them), and the entry kernel's `dz`, made in its
# prologue, per ablation from a bound. Entries far below the max lose low bits of
# their low half, i.e. precision relative to the max, which is what the normwise agreement
# counts; the product is undone by the two scales in the epilogue.

@triton.jit
def _split(x):
    bits = x.to(tl.int32, bitcast=True)
    hi = ((bits + 0x1000) & -0x2000).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def _tile(N, BM: tl.constexpr, BN: tl.constexpr):
    """This program's rows (ablations, positions) and output columns; consecutive programs
    share rows."""
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BN)
    return (pid // n_tiles) * BM + tl.arange(0, BM), (pid % n_tiles) * BN + tl.arange(0, BN)


@triton.jit
def _pow2_of(top):
    """Elementwise 2^k with `top * 2^k` in `[2^14, 2^15)` (clamped for zero)."""
    e = ((top.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127            # floor(log2 top)
    k = tl.minimum(tl.maximum(14 - e, -120), 120)
    return ((k + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _pow2_scale(amax_ptr, F16: tl.constexpr):
    """The float16 scale of an operand whose max is at `amax_ptr` (1.0 without F16)."""
    if F16:
        return _pow2_of(tl.load(amax_ptr))
    return 1.0


@triton.jit
def _dot3(w_hi, w_lo, x, acc, x_scale, F16: tl.constexpr):
    """`acc + w @ x^T` in three products of halves, `x` a float32 tile `[BM, BK]` split here."""
    if F16:
        xs = x * x_scale
        hi = xs.to(tl.float16)
        lo = (xs - hi.to(tl.float32)).to(tl.float16)
        hi = tl.trans(hi)
        acc = tl.dot(w_hi, tl.trans(lo), acc)
        acc = tl.dot(w_lo, hi, acc)
        acc = tl.dot(w_hi, hi, acc)
    else:
        x_hi, x_lo = _split(x)
        x_hi = tl.trans(x_hi)
        acc = tl.dot(w_hi, tl.trans(x_lo), acc, input_precision="tf32")
        acc = tl.dot(w_lo, x_hi, acc, input_precision="tf32")
        acc = tl.dot(w_hi, x_hi, acc, input_precision="tf32")
    return acc


def _grid(M: int, N: int):
    return lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)

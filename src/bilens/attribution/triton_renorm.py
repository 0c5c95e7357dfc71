"""`renorm`'s closed form as one Triton kernel: the products and the formula in one pass.

For the norm a layer's nodes reach first (`attribution.sequence_renorm`), the closed form
needs `r . D_k` (and, pre-norm, `gy . D_k`) for every row and channel, `gy . r` per row, then
some twenty elementwise operations on `[rows, d_hidden]` (`attribution.renorm._swap_norm`,
`_norm_change`). Eager, each operation is a pass over memory, and on the H200 they cost
`renorm` 16.4-19.5 ms over `live` at 1,024 sequences of the issue's shape; with this kernel
4.3 ms of GPU time (docs/benchmarks.md). Each tile of the products stays in registers and
the formula runs in their epilogue, which reads `c` and the live gradient once and writes
the prediction once:

- swap (pre-norm): `c g + (c gy.D_k + gy.r)(1/s' - 1/s) + c (r.D_k)(gy.r) / (d s^3)`;
- change (post-norm): `(gy.r)(1/s' - 1/s) + c (s g + (gy.r)(r.D_k) / (d s^2)) / s'`;

with `s'^2 = s^2 + (2 c r.D_k + c^2 |D_k|^2) / d` and `1/s' - 1/s = -ds2 / (s s' (s + s'))`,
as `core.norms` writes them. The products are three TF32 products of halves
(`core.triton_gemm._dot3`, ~2^-22 relative): float32 accuracy on the tensor cores. `D` is
split (and, for LayerNorm, centred) tile by tile as it is loaded, and `gamma g_N`, `gy . r`
and `|D_k|^2` are made in the same loop: for RMS the launch is the only kernel of a layer
before the last, which matters where the host sets the pace (128 sequences on the H200).

`out` may be `c` itself (`attribute_sequence` writes the prediction over `b - z` where the
run is not kept): each tile of `c` is read before its program writes it, and the autotuner,
which runs the kernel once per candidate launch shape, restores `out` after each run.

Import this module only where Triton is installed (`core.device.triton_available`).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from bilens.core.triton_gemm import _PRUNE, _TUNE, _configs, _dot3, _grid, _split, _tile

# (BM, BN, BK, warps, stages): BM over rows (positions), BN over channels; the swap keeps two
# accumulators and stages two row tiles, as `triton_ops.lr_dz` does with two weights.
_CONFIGS = ([(128, 64, 32, 8, 3), (128, 64, 32, 4, 3), (64, 64, 32, 4, 4),
             (128, 128, 32, 8, 2), (64, 128, 32, 4, 3)], [])


@triton.jit
def _rows(ptr, rm, rk, stride, ok):
    """The `[BM, BK]` tile of a row-major operand with row stride `stride`."""
    return tl.load(ptr + rm[:, None].to(tl.int64) * stride + rk[None, :], mask=ok, other=0.0)


@triton.jit
def _at(ptr, rm, rn, inner, outer_stride, inner_stride):
    """The pointers of the `[BN, BM]` tile of a `[n, inner, H]` operand (last stride 1), row
    `rm` at `(rm // inner, rm % inner)`."""
    row = (rm // inner).to(tl.int64) * outer_stride + (rm % inner) * inner_stride
    return ptr + row[None, :] + rn[:, None]


@triton.autotune(configs=_configs(_CONFIGS), key=["H", "D", "SWAP", "CENTRE"],
                 prune_configs_by=_PRUNE, restore_value=["out_ptr"], **_TUNE)
@triton.jit
def _renorm_kernel(r_ptr, gn_ptr, w_ptr, d_ptr, mean_ptr, s_ptr, c_ptr, g_ptr, out_ptr,
                   tiny, M, H, stride_r, stride_gn, stride_s, stride_dk, inner, c_outer, c_inner,
                   g_outer, g_inner, o_outer, o_inner,
                   D: tl.constexpr, SWAP: tl.constexpr, CENTRE: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm, rn = _tile(H, BM, BN)                                   # rows, channels
    row_ok, col_ok = rm < M, rn < H
    acc_r = tl.zeros((BN, BM), dtype=tl.float32)                # (r . D_k)^T tile
    acc_g = tl.zeros((BN, BM), dtype=tl.float32)                # (gy . D_k)^T tile (swap)
    along_r = tl.zeros((BM,), dtype=tl.float32)                 # gy . r, over the whole row
    sq = tl.zeros((BN,), dtype=tl.float32)                      # |D_k|^2, over the whole column
    if CENTRE:
        mean = tl.load(mean_ptr + rn, mask=col_ok, other=0.0)[:, None]
    for k0 in range(0, D, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < D
        x_ok = row_ok[:, None] & k_ok[None, :]
        w_ok = col_ok[:, None] & k_ok[None, :]
        w = tl.load(d_ptr + rk[None, :] * stride_dk + rn[:, None], mask=w_ok, other=0.0)
        if CENTRE:                                              # D^T tile [BN, BK], centred
            w = tl.where(w_ok, w - mean, 0.0)
        sq += tl.sum(w * w, axis=1)
        w_hi, w_lo = _split(w)                                  # TF32 halves, as split_weight
        r = _rows(r_ptr, rm, rk, stride_r, x_ok)
        gy = _rows(gn_ptr, rm, rk, stride_gn, x_ok) \
            * tl.load(w_ptr + rk, mask=k_ok, other=0.0)[None, :]   # gamma * g_N
        along_r += tl.sum(r * gy, axis=1)
        acc_r = _dot3(w_hi, w_lo, r, acc_r, 1.0, False)
        if SWAP:
            acc_g = _dot3(w_hi, w_lo, gy, acc_g, 1.0, False)
    ok = col_ok[:, None] & row_ok[None, :]
    s = tl.load(s_ptr + rm.to(tl.int64) * stride_s, mask=row_ok, other=1.0)[None, :]
    along_r = along_r[None, :]
    sq = sq[:, None]
    c = tl.load(_at(c_ptr, rm, rn, inner, c_outer, c_inner), mask=ok, other=0.0)
    g = tl.load(_at(g_ptr, rm, rn, inner, g_outer, g_inner), mask=ok, other=0.0)
    x = c * acc_r                                                       # c r . D_k
    ds2 = (c * c * sq + 2.0 * x) / D                                    # s'^2 - s^2
    s_new = tl.sqrt(tl.maximum(ds2 + s * s, tiny))
    inv_change = -ds2 / ((s * s_new) * (s + s_new))                     # 1/s' - 1/s
    if SWAP:
        out = (c * acc_g + along_r) * inv_change + x * (along_r / (D * s * s * s)) + c * g
    else:
        out = along_r * inv_change + c * (s * g + along_r * acc_r / (D * s * s)) / s_new
    tl.store(_at(out_ptr, rm, rn, inner, o_outer, o_inner), out, mask=ok)


def _three(x: Tensor) -> Tensor:
    """`[n, inner, H]` (a `[n, H]` operand as `[n, 1, H]`), its last stride 1."""
    x = x if x.dim() == 3 else x[:, None]
    return x if x.stride(-1) == 1 else x.contiguous()


def renorm_closed_form(r: Tensor, g_n: Tensor, weight: Tensor, D: Tensor, s: Tensor,
                       c: Tensor, g: Tensor, out: Tensor, swap: bool, centre: bool) -> Tensor:
    """`renorm`'s closed form for every row and channel, written into `out`.

    Args:
        r, g_n: `[M, d]` (last stride 1, row stride free): the norm's input (centred for
            LayerNorm) and the live gradient at its output.
        weight: the norm's `gamma` `[d]` (`gy = gamma * g_n`, made in the kernel).
        D: the layer's `D` `[d, H]` (last stride 1), split into TF32 halves in the kernel,
            its columns centred there with `centre` (LayerNorm); `|D_k|^2` is made there too.
        s: the statistic `[M]` (stride free).
        c, g, out: `b - z`, the live `d f / d z` (or the slope, post-norm) and the result,
            each `[n, inner, H]` or `[M, H]` with `M = n * inner` (views allowed, last
            stride 1), row `m` at `(m // inner, m % inner)`.
        swap: pre-norm's swap of the path through the norm (else post-norm's change).
        centre: LayerNorm (`D`'s columns centred; `r` comes centred).

    Returns:
        `out`.
    """
    r, g_n, D = (x if x.stride(-1) == 1 else x.contiguous() for x in (r, g_n, D))
    c3, g3, o3 = _three(c), _three(g), _three(out)
    M, d = r.shape
    H = D.shape[1]
    if o3.data_ptr() != out.data_ptr() or not c3.shape == g3.shape == o3.shape \
            or c3.shape[0] * c3.shape[1] != M:
        raise ValueError(f"renorm_closed_form: c, g, out must be [n, inner, H] with n * inner "
                         f"= {M} and out's last stride 1; got {tuple(c.shape)}, "
                         f"{tuple(g.shape)}, {tuple(out.shape)} (strides {out.stride()})")
    mean = D.mean(0) if centre else D
    with torch.cuda.device(r.device) if r.is_cuda else contextlib.nullcontext():
        _renorm_kernel[_grid(M, H)](
            r, g_n, weight.contiguous(), D, mean, s, c3, g3, o3,
            torch.finfo(torch.float32).tiny, M, H, r.stride(0), g_n.stride(0), s.stride(0),
            D.stride(0), c3.shape[1], c3.stride(0), c3.stride(1), g3.stride(0), g3.stride(1),
            o3.stride(0), o3.stride(1), D=d, SWAP=swap, CENTRE=centre)
    return out

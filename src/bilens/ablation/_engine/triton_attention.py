"""The attention's change under an ablation, as one Triton kernel per `(l, t)` call.

Per ablation (one channel `k` of one sequence) and head, the query rows `s` of positions
`qpos_s` and the keys `j`:

    dq, dk   = rope(dq_raw), rope(dk_raw)                       (rotary, at their positions)
    dS_sj    = (dq_s . k_j + (q_s + dq_s) . dk_j) / sqrt(d_head)   (dk_j = 0 outside t..t+Sd-1)
    dL_s     = log sum_j P_sj exp(dS_sj)                        (as `pattern_change`)
    dP_sj    = P_sj expm1(dS_sj - dL_s)
    do_s     = sum_j dP_sj v_j + (dP_sj + P_sj) dv_j

`SequencePlan.attention` runs this as about a dozen torch ops, and the `[b, heads, K, Sq, J]`
scores, their change and the pattern's change each pass through memory several times: in the
profile of the Triton backend they were the largest share of the GPU time after the MLP's
products. Here one program holds a block of query rows of one `(sequence, channel, head)`
and walks the keys twice (the row statistic `dL` first, then `do`), so `dS` and `dP` live
only in registers; the output is written as `[b, K, Sq, d_model]`, the layout `W_O` reads.

Every product is three TF32 products of halves (`x_hi y_hi + x_lo y_hi + x_hi y_lo`), float32
accurate. `expm1` is a polynomial where `|x| < 1/2` and `exp(x) - 1` beyond (and `P expm1`
is `(P e^(x/2)) e^(x/2) - P` beyond, so that a subnormal `P` times a huge `e^x` stays
finite); the row's `log1p` is taken in float64. Neither relies on a library call, so the
kernel also runs under Triton's interpreter (`tests/triton_interpreted.py`, against the
attention written from its definition in float64).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from bilens.ablation._engine.triton_ops import _split

_NONE = tl.constexpr(-1e30)  # log P where P = 0: finite, so masked rows make no inf - inf


@triton.jit
def _dot3(x, y, acc):
    """`acc + x @ y` in three TF32 products of halves, both factors split here."""
    x_hi, x_lo = _split(x)
    y_hi, y_lo = _split(y)
    acc = tl.dot(x_hi, y_lo, acc, input_precision="tf32")
    acc = tl.dot(x_lo, y_hi, acc, input_precision="tf32")
    return tl.dot(x_hi, y_hi, acc, input_precision="tf32")


@triton.jit
def _expm1(x):
    """`exp(x) - 1`, accurate relative to itself: Taylor to x^9 where |x| < 1/2."""
    return tl.where(tl.abs(x) < 0.5, x * _expm1_poly(x), tl.exp(x) - 1.0)


@triton.jit
def _expm1_poly(x):
    """`(exp(x) - 1) / x` as its Taylor polynomial to x^8 (for |x| < 1/2: error < 1e-9)."""
    p = 1.0 + x / 9.0
    p = 1.0 + x / 8.0 * p
    p = 1.0 + x / 7.0 * p
    p = 1.0 + x / 6.0 * p
    p = 1.0 + x / 5.0 * p
    p = 1.0 + x / 4.0 * p
    p = 1.0 + x / 3.0 * p
    return 1.0 + x / 2.0 * p


@triton.jit
def _p_expm1(p, x):
    """`p (exp(x) - 1)`, accurate relative to itself, 0 where `p = 0`: the polynomial where
    `|x| < 1/2`, else `(p e^(x/2)) e^(x/2) - p`, finite for every `p e^x` up to ~1 even where
    `p` is subnormal and `e^x` alone would overflow."""
    h = tl.exp(0.5 * x)
    big = (p * h) * h - p
    return tl.where(p > 0, tl.where(tl.abs(x) < 0.5, p * (x * _expm1_poly(x)), big), 0.0)


@triton.jit
def _log1p(y):
    """`log(1 + y)` in float64, accurate relative to itself (a row statistic: few calls)."""
    y = y.to(tl.float64)
    return tl.where(tl.abs(y) < 1e-4, y * (1.0 - y * (0.5 - y / 3.0)), tl.log(1.0 + y))


@triton.jit
def _rope_rows(base, stride_row, rows, row_ok, pos, cos_ptr, sin_ptr, dh,
               BD: tl.constexpr):
    """Rows `rows` of a `[n, d_head]` block at `base` (row stride `stride_row`, columns
    contiguous), rotated at positions `pos`: `x cos + rot(x) sin`, rot-half."""
    d = tl.arange(0, BD)
    half = dh // 2
    partner = tl.where(d < half, d + half, d - half)
    sign = tl.where(d < half, -1.0, 1.0)
    ok = row_ok[:, None] & (d < dh)[None, :]
    at = base + rows[:, None].to(tl.int64) * stride_row
    x = tl.load(at + d[None, :], mask=ok, other=0.0)
    xr = tl.load(at + partner[None, :], mask=ok, other=0.0)
    angle = pos[:, None] * dh + d[None, :]
    c = tl.load(cos_ptr + angle, mask=ok, other=0.0)
    s = tl.load(sin_ptr + angle, mask=ok, other=0.0)
    return x * c + sign[None, :] * xr * s


@triton.jit
def _clean_rows(base, stride_row, rows, row_ok, dh, BD: tl.constexpr):
    """Rows `rows` of a `[n, d_head]` block at `base` (columns contiguous); 0 where masked."""
    d = tl.arange(0, BD)
    ok = row_ok[:, None] & (d < dh)[None, :]
    return tl.load(base + rows[:, None].to(tl.int64) * stride_row + d[None, :], mask=ok,
                   other=0.0)


@triton.jit
def _scores(j0, dq, qq, qp, k_base, stride_k, dk_base, stride_dk, p_base, stride_p,
            cos_ptr, sin_ptr, t, Sd, J, dh, scale,
            BQ: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr):
    """For keys `j0..j0+BJ-1`: `dS` `[BQ, BJ]` (0 outside the causal mask), the clean `P`."""
    j = j0 + tl.arange(0, BJ)
    key = _clean_rows(k_base, stride_k, j, j < J, dh, BD)
    s = _dot3(dq, tl.trans(key), tl.zeros((BQ, BJ), dtype=tl.float32))
    if j0 + BJ > t:                                       # the block holds changed keys
        jd = j - t
        dk = _rope_rows(dk_base, stride_dk, jd, (jd >= 0) & (jd < Sd), j, cos_ptr, sin_ptr,
                        dh, BD)
        s = _dot3(qq, tl.trans(dk), s)
    causal = (j[None, :] <= qp[:, None]) & (j < J)[None, :]
    p = tl.load(p_base + qp[:, None].to(tl.int64) * stride_p + j[None, :], mask=causal,
                other=0.0)
    return tl.where(causal, s * scale, 0.0), p


@triton.jit
def _stats(s, p, small, hi, lo, top, total):
    """The row statistics of `dL` after one more block of keys: `sum P expm1(dS)`, the
    extremes of `dS`, and the logsumexp of `log P + dS` kept online (`top`, `total`)."""
    small += tl.sum(p * _expm1(tl.minimum(s, 1.0)), 1)
    hi = tl.maximum(hi, tl.max(s, 1))
    lo = tl.minimum(lo, tl.min(s, 1))
    lg = tl.where(p > 0, tl.log(tl.where(p > 0, p, 1.0)) + s, _NONE)
    new = tl.maximum(top, tl.max(lg, 1))
    total = total * tl.exp(top - new) + tl.sum(tl.where(p > 0, tl.exp(lg - new[:, None]), 0.0),
                                               1)
    return small, hi, lo, new, total


@triton.jit
def _dl(small, hi, lo, top, total):
    """`dL` per query row: `log1p(sum P expm1(dS))` where every `|dS| < 1/2`, else the
    logsumexp."""
    large = top + tl.log(tl.maximum(total, 1e-30))     # (Triton 3.5 reads 1e-38 as float64)
    return tl.where((hi < 0.5) & (lo > -0.5), _log1p(small).to(tl.float32), large
                    ).to(tl.float32)


@triton.jit
def _do_block(j0, s, p, dL, acc, v_base, stride_v, dv_base, stride_dv, t, Sd, J, dh,
              BJ: tl.constexpr, BD: tl.constexpr):
    """`acc + dP v + (dP + P) dv` over keys `j0..j0+BJ-1`, `dP = P expm1(dS - dL)` (0 where
    `P = 0`: masked keys, where `expm1` may overflow when `dL` is very negative)."""
    dp = _p_expm1(p, s - dL[:, None])
    j = j0 + tl.arange(0, BJ)
    acc = _dot3(dp, _clean_rows(v_base, stride_v, j, j < J, dh, BD), acc)
    if j0 + BJ > t:
        jd = j - t
        acc = _dot3(dp + p, _clean_rows(dv_base, stride_dv, jd, (jd >= 0) & (jd < Sd), dh, BD),
                    acc)
    return acc


# One launch shape, no autotuning: the kernel is compiled for each (DQ_AT_T, AMAX, SINGLE,
# BQ) met (BD = d_head rounded up), 24 variants at most, where autotuning 4 shapes of each
# of 36 (BQ, BJ) pairs took minutes of the first run on the H200. With 8 warps a 64 x 64
# block overflows shared memory (`tests/test_triton_ops.py`). The blocks of query rows and
# keys shrink as d_head grows, so that the tiles fit in a GPU's shared memory (at most
# 96 KiB for these, by compiling for sm_90; the H200 has 227 KiB); a launch that fails
# anyway makes `SequencePlan` fall back to torch ops.
_WARPS, _STAGES = 4, 1
_BLOCK = {16: 64, 32: 64, 64: 64, 128: 32, 256: 16}            # BD -> largest BQ, and BJ


@triton.jit
def _attention_change_kernel(
        dq_ptr, dk_ptr, dv_ptr, q_ptr, k_ptr, v_ptr, p_ptr, cos_ptr, sin_ptr, qpos_ptr, out_ptr,
        amax_ptr, K, Sq, Sd, J, t, dh, scale,
        sdq_b, sdq_k, sdq_s, sdq_h, sdk_b, sdk_k, sdk_s, sdk_h, sdv_b, sdv_k, sdv_s, sdv_h,
        sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sp_b, sp_h, sp_t, sqp_b, sqp_s,
        DQ_AT_T: tl.constexpr, AMAX: tl.constexpr, SINGLE: tl.constexpr, BQ: tl.constexpr,
        BJ: tl.constexpr, BD: tl.constexpr):
    bk, h = tl.program_id(0), tl.program_id(1).to(tl.int64)
    bi, ki = (bk // K).to(tl.int64), (bk % K).to(tl.int64)     # 64-bit offsets
    rows = tl.program_id(2) * BQ + tl.arange(0, BQ)                    # query slots
    row_ok = rows < Sq
    qp = tl.load(qpos_ptr + bi * sqp_b + rows * sqp_s, mask=row_ok, other=-1)  # -1: no keys
    dq_base = dq_ptr + bi * sdq_b + ki * sdq_k + h * sdq_h
    if DQ_AT_T:             # dq is the query at t alone (0 at every other query position)
        at_t = tl.zeros_like(rows)
        dq = _rope_rows(dq_base, sdq_s, at_t, row_ok & (qp == t), at_t + t, cos_ptr, sin_ptr,
                        dh, BD)
    else:
        dq = _rope_rows(dq_base, sdq_s, rows, row_ok, tl.maximum(qp, 0), cos_ptr, sin_ptr,
                        dh, BD)
    qq = _clean_rows(q_ptr + bi * sq_b + h * sq_h, sq_t, tl.maximum(qp, 0), row_ok, dh, BD) + dq
    k_base, p_base = k_ptr + bi * sk_b + h * sk_h, p_ptr + bi * sp_b + h * sp_h
    dk_base = dk_ptr + bi * sdk_b + ki * sdk_k + h * sdk_h
    v_base = v_ptr + bi * sv_b + h * sv_h
    dv_base = dv_ptr + bi * sdv_b + ki * sdv_k + h * sdv_h
    small = tl.zeros((BQ,), dtype=tl.float32)
    hi, lo, total = small, small, small
    top = tl.full((BQ,), _NONE, dtype=tl.float32)
    acc = tl.zeros((BQ, BD), dtype=tl.float32)
    if SINGLE:                        # every key in one block: the scores made once
        s, p = _scores(0, dq, qq, qp, k_base, sk_t, dk_base, sdk_s, p_base, sp_t, cos_ptr,
                       sin_ptr, t, Sd, J, dh, scale, BQ, BJ, BD)
        small, hi, lo, top, total = _stats(s, p, small, hi, lo, top, total)
        acc = _do_block(0, s, p, _dl(small, hi, lo, top, total), acc, v_base, sv_t, dv_base,
                        sdv_s, t, Sd, J, dh, BJ, BD)
    else:                             # two walks over the keys: dL, then do
        j_end = tl.minimum(tl.max(qp, 0) + 1, J)
        for j0 in range(0, j_end, BJ):
            s, p = _scores(j0, dq, qq, qp, k_base, sk_t, dk_base, sdk_s, p_base, sp_t, cos_ptr,
                           sin_ptr, t, Sd, J, dh, scale, BQ, BJ, BD)
            small, hi, lo, top, total = _stats(s, p, small, hi, lo, top, total)
        dL = _dl(small, hi, lo, top, total)
        for j0 in range(0, j_end, BJ):
            s, p = _scores(j0, dq, qq, qp, k_base, sk_t, dk_base, sdk_s, p_base, sp_t, cos_ptr,
                           sin_ptr, t, Sd, J, dh, scale, BQ, BJ, BD)
            acc = _do_block(j0, s, p, dL, acc, v_base, sv_t, dv_base, sdv_s, t, Sd, J, dh,
                            BJ, BD)
    d = tl.arange(0, BD)
    out = out_ptr + ((bi * K + ki) * Sq + rows[:, None]) * (dh * tl.num_programs(1)) \
        + h * dh + d[None, :]
    ok = row_ok[:, None] & (d < dh)[None, :]
    tl.store(out, acc, mask=ok)
    if AMAX:                                  # the float16 scale of the W_O product's input
        tl.atomic_max(amax_ptr, tl.max(tl.max(tl.abs(tl.where(ok, acc, 0.0)), 1), 0))


def attention_change(dq: Tensor, dk: Tensor, dv: Tensor, q: Tensor, k: Tensor, v: Tensor,
                     pattern: Tensor, cos: Tensor, sin: Tensor, qpos: Tensor, t: int, J: int,
                     amax: bool = False) -> tuple[Tensor, Tensor | None]:
    """`Attn(a + da) - Attn(a)` at the query positions, before `W_O`, `[b, K, Sq, d_model]`,
    and with `amax` its `max|.|` (a one-element tensor, for `triton_ops.down`'s float16
    halves), else None.

    Args:
        dq: `[b, K, n, heads, d_head]` before rotary: at the query slots (`n = Sq`), or,
            when `dk` is given at `t` alone (`Sd = 1`: the layer after the ablated node's),
            at position `t` alone, 0 at every other query.
        dk, dv: `[b, K, Sd, heads, d_head]` at keys `t..t+Sd-1` (`dk` before rotary).
        q, k, v: the clean rotated `q`, `k` and `v`, `[b, heads, T, d_head]`.
        pattern: the clean pattern `[b, heads, T, T]`.
        cos, sin: `rope_angles` `[T, d_head]`.
        qpos: the query positions `[b | 1, Sq]` (long).
        t: the first changed key; J: keys `0..J-1` are read.
    Any strides, except that the last axis of every tensor is contiguous.
    """
    b, K, n, nh, dh = dq.shape
    Sq, Sd = qpos.shape[1], dk.shape[2]
    for x in (dq, dk, dv, q, k, v, pattern):
        assert x.stride(-1) == 1, "the last axis must be contiguous"
    out = torch.empty(b, K, Sq, nh * dh, device=dq.device, dtype=torch.float32)
    top = torch.zeros(1, device=dq.device, dtype=torch.float32) if amax else None
    BD = max(16, triton.next_power_of_2(dh))
    BQ, BJ = min(_BLOCK[BD], max(16, triton.next_power_of_2(Sq))), _BLOCK[BD]
    qpos = qpos.expand(b, Sq)
    cos, sin = cos.contiguous(), sin.contiguous()
    grid = (b * K, nh, triton.cdiv(Sq, BQ))
    _attention_change_kernel[grid](
        dq, dk, dv, q, k, v, pattern, cos, sin, qpos, out, out if top is None else top, K, Sq,
        Sd, J, t, dh, 1 / math.sqrt(dh), *dq.stride()[:4], *dk.stride()[:4],
        *dv.stride()[:4], *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *pattern.stride()[:3], *qpos.stride(), DQ_AT_T=Sd == 1, AMAX=amax, SINGLE=J <= BJ,
        BQ=BQ, BJ=BJ, BD=BD, num_warps=_WARPS, num_stages=_STAGES)
    return out, top

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
products. Here one program holds a block of query rows of one `(sequence, channel, head)`:
where every key fits one block the scores are made once, else it walks the keys twice (the
row statistic `dL` first, then `do`), so `dS` and `dP` live only in registers; the output
is written as `[b, K, Sq, d_model]`, the layout `W_O` reads. In the layer right after the
ablated node's, `dk` and `dv` live at key `t` alone: `(q + dq) . dk_t` is a column and
`(dP + P)_t dv_t` an outer product, made without products of tiles.

Every product of tiles is three TF32 products of halves (`x_hi y_hi + x_lo y_hi + x_hi
y_lo`), float32 accurate. `expm1` is a polynomial where `|x| < 1/2` and `exp(x) - 1` beyond
(and `P expm1` is `(P e^(x/2)) e^(x/2) - P` beyond, so that a subnormal `P` times a huge
`e^x` stays finite); that exponential is only taken in a block where some element needs
it, and, where every key fits one block, the row statistic's logsumexp only where some row
needs it (the common ablation changes every score by less than 1/2). The row's
`log1p` is taken in float64. Nothing relies on a library call, so the kernel also runs
under Triton's interpreter (`tests/triton_interpreted.py`, against the attention written
from its definition in float64).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from bilens.core.triton_gemm import _split, max_slot

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
def _expm1_poly(x):
    """`(exp(x) - 1) / x` as its Taylor polynomial to x^8, `sum x^n / (n + 1)!` by Horner's
    rule with the coefficients as constants (no divisions); for |x| <= 1/2 the error is
    below 1e-9."""
    p = 2.7557319223985893e-06 * x + 2.48015873015873e-05          # 1/9!, 1/8!
    p = p * x + 1.984126984126984e-04                              # 1/7!
    p = p * x + 1.388888888888889e-03                              # 1/6!
    p = p * x + 8.333333333333333e-03                              # 1/5!
    p = p * x + 4.1666666666666664e-02                             # 1/4!
    p = p * x + 1.6666666666666666e-01                             # 1/3!
    p = p * x + 0.5
    return p * x + 1.0


@triton.jit
def _p_expm1(p, x):
    """`p (exp(x) - 1)`, accurate relative to itself, 0 where `p = 0`: the polynomial where
    `|x| < 1/2`, else `(p e^(x/2)) e^(x/2) - p`, finite for every `p e^x` up to ~1 even where
    `p` is subnormal and `e^x` alone would overflow. The exponential is only taken when some
    element of the block needs it (a change of the pattern by less than 1/2 everywhere is
    the common case)."""
    near = tl.minimum(tl.maximum(x, -0.5), 0.5)
    out = p * (x * _expm1_poly(near))
    if tl.max(tl.max(tl.where(p > 0, tl.abs(x), 0.0), 1), 0) >= 0.5:
        h = tl.exp(0.5 * x)
        out = tl.where(tl.abs(x) < 0.5, out, (p * h) * h - p)
    return tl.where(p > 0, out, 0.0)


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
def _scores(j0, dq, qq, col, at_t, qp, k_base, stride_k, dk_base, stride_dk, p_base, stride_p,
            cos_ptr, sin_ptr, t, Sd, J, dh, scale, AT_T: tl.constexpr,
            BQ: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr):
    """For keys `j0..j0+BJ-1`: `dS` `[BQ, BJ]` (0 outside the causal mask), the clean `P`.
    With `AT_T` (the changes at `t` alone) the query at `t` (`at_t`) reads every key with
    `dq` (`[1, BD]`), and every query reads the key at `t` alone with `col = (q + dq) . dk_t`,
    a column added without a product of tiles (fewer registers spilled than with the
    query's row made the same way, by compiling both for sm_90)."""
    j = j0 + tl.arange(0, BJ)
    key = _clean_rows(k_base, stride_k, j, j < J, dh, BD)
    if AT_T:
        s = _dot3(tl.where(at_t[:, None], dq, 0.0), tl.trans(key),
                  tl.zeros((BQ, BJ), dtype=tl.float32))
        s += tl.where(j[None, :] == t, col[:, None], 0.0)
    else:
        s = _dot3(dq, tl.trans(key), tl.zeros((BQ, BJ), dtype=tl.float32))
        if j0 + BJ > t:                                   # the block holds changed keys
            jd = j - t
            dk = _rope_rows(dk_base, stride_dk, jd, (jd >= 0) & (jd < Sd), j, cos_ptr,
                            sin_ptr, dh, BD)
            s = _dot3(qq, tl.trans(dk), s)
    causal = (j[None, :] <= qp[:, None]) & (j < J)[None, :]
    p = tl.load(p_base + qp[:, None].to(tl.int64) * stride_p + j[None, :], mask=causal,
                other=0.0)
    return tl.where(causal, s * scale, 0.0), p


@triton.jit
def _stats(s, p, small, hi, lo, top, total, LAST: tl.constexpr):
    """The row statistics of `dL` after one more block of keys: `sum P expm1(dS)` (its value
    counts only where every `|dS| < 1/2`, so the polynomial alone), the extremes of `dS`,
    and the logsumexp of `log P + dS` kept online (`top`, `total`). With `LAST` (every key
    in this block) the logsumexp is only made when some row needs it."""
    near = tl.minimum(tl.maximum(s, -0.5), 0.5)
    small += tl.sum(p * (near * _expm1_poly(near)), 1)
    hi = tl.maximum(hi, tl.max(s, 1))
    lo = tl.minimum(lo, tl.min(s, 1))
    if LAST:
        if (tl.max(hi, 0) >= 0.5) | (tl.min(lo, 0) <= -0.5):
            top, total = _logsumexp(s, p, top, total)
    else:
        top, total = _logsumexp(s, p, top, total)
    return small, hi, lo, top, total


@triton.jit
def _logsumexp(s, p, top, total):
    """The online logsumexp of `log P + dS` over one more block: the running maximum `top`
    and the sum `total` of `exp(log P + dS - top)`."""
    lg = tl.where(p > 0, tl.log(tl.where(p > 0, p, 1.0)) + s, _NONE)
    new = tl.maximum(top, tl.max(lg, 1))
    total = total * tl.exp(top - new) + tl.sum(tl.where(p > 0, tl.exp(lg - new[:, None]), 0.0),
                                               1)
    return new, total


@triton.jit
def _dl(small, hi, lo, top, total):
    """`dL` per query row: `log1p(sum P expm1(dS))` where every `|dS| < 1/2`, else the
    logsumexp."""
    large = top + tl.log(tl.maximum(total, 1e-30))     # (Triton 3.5 reads 1e-38 as float64)
    return tl.where((hi < 0.5) & (lo > -0.5), _log1p(small).to(tl.float32), large
                    ).to(tl.float32)


@triton.jit
def _do_block(j0, s, p, dL, acc, v_base, stride_v, dv_base, stride_dv, t, Sd, J, dh,
              AT_T: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr):
    """`acc + dP v + (dP + P) dv` over keys `j0..j0+BJ-1`, `dP = P expm1(dS - dL)` (0 where
    `P = 0`: masked keys, where `expm1` may overflow when `dL` is very negative); with
    `AT_T`, `dv` at key `t` alone: an outer product."""
    dp = _p_expm1(p, s - dL[:, None])
    j = j0 + tl.arange(0, BJ)
    acc = _dot3(dp, _clean_rows(v_base, stride_v, j, j < J, dh, BD), acc)
    if AT_T:                                    # (dP + P) at key t, 0 if t is not in this block
        w = tl.sum(tl.where(j[None, :] == t, dp + p, 0.0), 1)
        first = tl.zeros((1,), dtype=tl.int32)
        acc += w[:, None] * _clean_rows(dv_base, stride_dv, first, first == 0, dh, BD)
    elif j0 + BJ > t:
        jd = j - t
        acc = _dot3(dp + p, _clean_rows(dv_base, stride_dv, jd, (jd >= 0) & (jd < Sd), dh, BD),
                    acc)
    return acc


# One launch shape per d_head, no autotuning: the kernel is compiled for each (DQ_AT_T, AMAX,
# SINGLE, BQ) met (BD = d_head rounded up), 24 variants at most, where autotuning 4 shapes of
# each of 36 (BQ, BJ) pairs took minutes of the first run on the H200. The blocks of query
# rows and keys shrink as d_head grows, so that the tiles fit in a GPU's shared memory (at
# most 96 KiB for these, by compiling for sm_90; the H200 has 227 KiB); a launch that fails
# anyway makes `SequencePlan` fall back to torch ops. `benchmarks/attention_kernel.py` times
# other launch shapes against these.
_STAGES = 1
_LAUNCH = {16: (64, 64, 4), 32: (64, 64, 4), 64: (64, 64, 4), 128: (32, 32, 4),
           256: (16, 16, 4)}                     # BD -> (largest BQ, BJ, warps)


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
    dk_base = dk_ptr + bi * sdk_b + ki * sdk_k + h * sdk_h
    clean_q = _clean_rows(q_ptr + bi * sq_b + h * sq_h, sq_t, tl.maximum(qp, 0), row_ok, dh, BD)
    if DQ_AT_T:      # dq, dk, dv at t alone: dq of the query at t ([1, BD]), dk_t . (q + dq)
        first = tl.zeros((1,), dtype=tl.int32)
        at_t = row_ok & (qp == t)
        dq = _rope_rows(dq_base, sdq_s, first, first == 0, first + t, cos_ptr, sin_ptr, dh, BD)
        qq = clean_q + tl.where(at_t[:, None], dq, 0.0)
        col = tl.sum(qq * _rope_rows(dk_base, sdk_s, first, first == 0, first + t, cos_ptr,
                                     sin_ptr, dh, BD), 1)
    else:
        at_t, col = row_ok, tl.zeros((BQ,), dtype=tl.float32)            # (unused)
        dq = _rope_rows(dq_base, sdq_s, rows, row_ok, tl.maximum(qp, 0), cos_ptr, sin_ptr,
                        dh, BD)
        qq = clean_q + dq
    k_base, p_base = k_ptr + bi * sk_b + h * sk_h, p_ptr + bi * sp_b + h * sp_h
    v_base = v_ptr + bi * sv_b + h * sv_h
    dv_base = dv_ptr + bi * sdv_b + ki * sdv_k + h * sdv_h
    small = tl.zeros((BQ,), dtype=tl.float32)
    hi, lo, total = small, small, small
    top = tl.full((BQ,), _NONE, dtype=tl.float32)
    acc = tl.zeros((BQ, BD), dtype=tl.float32)
    if SINGLE:                        # every key in one block: the scores made once
        s, p = _scores(0, dq, qq, col, at_t, qp, k_base, sk_t, dk_base, sdk_s, p_base, sp_t,
                       cos_ptr, sin_ptr, t, Sd, J, dh, scale, DQ_AT_T, BQ, BJ, BD)
        small, hi, lo, top, total = _stats(s, p, small, hi, lo, top, total, True)
        acc = _do_block(0, s, p, _dl(small, hi, lo, top, total), acc, v_base, sv_t, dv_base,
                        sdv_s, t, Sd, J, dh, DQ_AT_T, BJ, BD)
    else:                             # two walks over the keys: dL, then do
        j_end = tl.minimum(tl.max(qp, 0) + 1, J)
        for j0 in range(0, j_end, BJ):
            s, p = _scores(j0, dq, qq, col, at_t, qp, k_base, sk_t, dk_base, sdk_s, p_base,
                           sp_t, cos_ptr, sin_ptr, t, Sd, J, dh, scale, DQ_AT_T, BQ, BJ, BD)
            small, hi, lo, top, total = _stats(s, p, small, hi, lo, top, total, False)
        dL = _dl(small, hi, lo, top, total)
        for j0 in range(0, j_end, BJ):
            s, p = _scores(j0, dq, qq, col, at_t, qp, k_base, sk_t, dk_base, sdk_s, p_base,
                           sp_t, cos_ptr, sin_ptr, t, Sd, J, dh, scale, DQ_AT_T, BQ, BJ, BD)
            acc = _do_block(j0, s, p, dL, acc, v_base, sv_t, dv_base, sdv_s, t, Sd, J, dh,
                            DQ_AT_T, BJ, BD)
    d = tl.arange(0, BD)
    out = out_ptr + ((bi * K + ki) * Sq + rows[:, None]) * (dh * tl.num_programs(1)) \
        + h * dh + d[None, :]
    ok = row_ok[:, None] & (d < dh)[None, :]
    tl.store(out, acc, mask=ok)
    if AMAX:                                  # the float16 scale of the W_O product's input
        tl.atomic_max(amax_ptr, tl.max(tl.max(tl.abs(tl.where(ok, acc, 0.0)), 1), 0))


def attention_change(dq: Tensor, dk: Tensor, dv: Tensor, q: Tensor, k: Tensor, v: Tensor,
                     pattern: Tensor, cos: Tensor, sin: Tensor, qpos: Tensor, t: int, J: int,
                     amax: bool = False, zeroed: Tensor | None = None
                     ) -> tuple[Tensor, Tensor | None]:
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
        zeroed: with `amax`, a one-element float32 tensor holding 0 to take the maximum
            (else a new one).
    Any strides, except that the last axis of every tensor is contiguous.
    """
    b, K, n, nh, dh = dq.shape
    Sq, Sd = qpos.shape[1], dk.shape[2]
    for x in (dq, dk, dv, q, k, v, pattern):
        assert x.stride(-1) == 1, "the last axis must be contiguous"
    out = torch.empty(b, K, Sq, nh * dh, device=dq.device, dtype=torch.float32)
    top = max_slot(zeroed, dq.device) if amax else None
    BD = max(16, triton.next_power_of_2(dh))
    bq, BJ, warps = _LAUNCH[BD]
    BQ = min(bq, max(16, triton.next_power_of_2(Sq)))
    qpos = qpos.expand(b, Sq)
    cos, sin = cos.contiguous(), sin.contiguous()
    grid = (b * K, nh, triton.cdiv(Sq, BQ))
    _attention_change_kernel[grid](
        dq, dk, dv, q, k, v, pattern, cos, sin, qpos, out, out if top is None else top, K, Sq,
        Sd, J, t, dh, 1 / math.sqrt(dh), *dq.stride()[:4], *dk.stride()[:4],
        *dv.stride()[:4], *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *pattern.stride()[:3], *qpos.stride(), DQ_AT_T=Sd == 1, AMAX=amax, SINGLE=J <= BJ,
        BQ=BQ, BJ=BJ, BD=BD, num_warps=warps, num_stages=_STAGES)
    return out, top

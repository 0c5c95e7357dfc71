"""Triton GEMMs for exhaustive ablation on a GPU: split products, the bilinear steps fused in.

The suffix of an ablated layer is, per full layer, `dz = a * dR + dL * (b + dR)` with
`[dL | dR] = rows @ [L; R]^T`, then `delta = du + dz @ D^T`. Run as cuBLAS calls plus
fused elementwise steps (`_engine.steps`), every `[ablations, d_hidden]` intermediate
(`[dL | dR]`, `dz`, their TF32 halves) goes through memory, and that traffic was a third
of the GPU time. Here:

- `lr_dz`: `rows @ [L; R]^T` with the bilinear step in the epilogue: `dz` is written once,
  `[dL | dR]` never.
- `down`: `dz @ D^T (+ du)`: the left factor is split into halves as it is loaded.
- `entry_down`: the layer right after the ablated one. Its input perturbation is rank 2
  (`du = alpha P_k + beta q`, see `_engine.plan`), so each tile of its `dz` is made in
  the prologue from `(L P)_k`, `(R P)_k` and per-input rows; that `dz` never exists in
  memory. The epilogue adds the residual's own `du` in the same rank-2 form.

Every product is three products of halves: each float32 factor `x` is `x_hi + x_lo`, and
`x @ w ~ x_hi w_hi + x_lo w_hi + x_hi w_lo` (the dropped `x_lo w_lo` is ~2^-22 relative).
The halves are TF32 (`"3xtf32"`) or scaled float16 (`"3xfp16"`, see below). The weights
come split (`split_weight`); the activations are split in registers.

Import this module only where Triton is installed (it is on CUDA builds of torch);
`bilens.core.device.triton_available` says whether it is. With
`TRITON_INTERPRET=1` set before the import the kernels run on the CPU, slowly (a way to
check index arithmetic without a GPU; Triton 3.5's interpreter needs numpy < 2.4).
`tests/test_triton_ops.py` compiles every kernel for sm_90 where Triton is installed and
runs them against float64 on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from bilens.core.split import Split, split_weight  # noqa: F401  (re-exported)
from bilens.core.triton_gemm import (  # noqa: F401  (re-exported: the plans and tests read them)
    _F16_ONLY,
    _PRUNE,
    _TUNE,
    TRITON_ERRORS,
    _configs,
    _dot3,
    _grid,
    _pow2_of,
    _pow2_scale,
    _prune,
    _split,
    _tile,
    amax,
    configs_for,
    f16_only,
    max_slot,
)

# (BM, BN, BK, warps, stages): a few shapes for the autotuner; every one is tried once per
# (d_model, d_hidden, precision) on the first call. BM runs over ablations, BN over output
# features. The second list of each is tried for float16 halves only: their weight tiles
# take half the shared memory, which leaves room for BK = 64 and deeper pipelines (each
# was compiled for sm_90 and fits; in TF32 none does). Shapes that overflow the 227 KiB of
# shared memory anyway are skipped by the autotuner.
_LR_CONFIGS = ([(128, 64, 32, 8, 3), (128, 64, 32, 4, 3), (64, 64, 32, 4, 4),
                (128, 128, 32, 8, 2), (64, 128, 32, 4, 3)],
               [(128, 64, 64, 8, 3), (128, 128, 64, 8, 2), (64, 128, 64, 4, 3),
                (128, 128, 32, 8, 3)])
_DOWN_CONFIGS = ([(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
                  (128, 256, 32, 8, 2), (256, 128, 32, 8, 2)],
                 [(128, 128, 64, 8, 3), (128, 256, 64, 8, 2), (256, 128, 64, 8, 2),
                  (128, 256, 32, 8, 3)])
# the entry kernel also stages two [BM, BK] prologue tiles ((L P)_k, (R P)_k)
_ENTRY_CONFIGS = ([(128, 128, 32, 8, 3), (128, 256, 32, 8, 2), (128, 128, 16, 8, 3),
                   (64, 256, 32, 8, 3), (64, 128, 32, 4, 3)],
                  [(128, 128, 64, 8, 3), (128, 256, 64, 8, 2), (128, 256, 32, 8, 3)])


@triton.autotune(configs=_configs(_LR_CONFIGS), key=["H", "D", "F16"], prune_configs_by=_PRUNE,
                 **_TUNE)
@triton.jit
def _lr_dz_kernel(x_ptr, lh_ptr, ll_ptr, rh_ptr, rl_ptr, a_ptr, b_ptr, z_ptr, xmax_ptr, zmax_ptr,
                  l_scale, r_scale, M, H, per_input, inner, stride_ab,
                  D: tl.constexpr, F16: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm, rn = _tile(H, BM, BN)                                   # ablations, hidden units
    row_ok, col_ok = rm < M, rn < H
    x_scale = _pow2_scale(xmax_ptr, F16)
    acc_l = tl.zeros((BN, BM), dtype=tl.float32)                # (L x)^T tile
    acc_r = tl.zeros((BN, BM), dtype=tl.float32)
    for k0 in range(0, D, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < D
        x = tl.load(x_ptr + rm[:, None].to(tl.int64) * D + rk[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = rn[:, None] * D + rk[None, :]                       # L, R: [H, D]
        w_ok = col_ok[:, None] & k_ok[None, :]
        acc_l = _dot3(tl.load(lh_ptr + w, mask=w_ok, other=0.0),
                      tl.load(ll_ptr + w, mask=w_ok, other=0.0), x, acc_l, x_scale, F16)
        acc_r = _dot3(tl.load(rh_ptr + w, mask=w_ok, other=0.0),
                      tl.load(rl_ptr + w, mask=w_ok, other=0.0), x, acc_r, x_scale, F16)
    if F16:
        acc_l = acc_l * (1.0 / (x_scale * l_scale))
        acc_r = acc_r * (1.0 / (x_scale * r_scale))
    ok = col_ok[:, None] & row_ok[None, :]
    inp = (rm // (per_input * inner)) * inner + rm % inner      # rows (i, k, s): input i*inner+s
    ab = inp[None, :] * stride_ab + rn[:, None]
    a = tl.load(a_ptr + ab, mask=ok, other=0.0)
    b = tl.load(b_ptr + ab, mask=ok, other=0.0)
    z = a * acc_r + acc_l * (b + acc_r)
    tl.store(z_ptr + rm[None, :].to(tl.int64) * H + rn[:, None], z, mask=ok)
    if F16:                                                     # the next product's scale
        tl.atomic_max(zmax_ptr, tl.max(tl.max(tl.abs(tl.where(ok, z, 0.0)), 1), 0))


@triton.jit
def _store_delta(acc, out_ptr, add_ptr, u1_ptr, v_ptr, u2_ptr, q_ptr, ch, rm, rn, M, per_input,
                 D: tl.constexpr, ADD: tl.constexpr, HAS_Q: tl.constexpr):
    """Store `acc^T [BN, BM]` as rows `rm` of `out [M, D]`: `acc (+ add)` (ADD 1) or
    `acc + u1 V[ch] (+ u2 Q[input])` (ADD 2)."""
    row_ok = rm < M
    ok = (rn < D)[:, None] & row_ok[None, :]
    out = rm[None, :].to(tl.int64) * D + rn[:, None]
    if ADD == 1:
        acc += tl.load(add_ptr + out, mask=ok, other=0.0)
    if ADD == 2:
        u1 = tl.load(u1_ptr + rm, mask=row_ok, other=0.0)
        acc += u1[None, :] * tl.load(v_ptr + ch[None, :] * D + rn[:, None], mask=ok, other=0.0)
        if HAS_Q:
            u2 = tl.load(u2_ptr + rm, mask=row_ok, other=0.0)
            q = tl.load(q_ptr + (rm // per_input)[None, :] * D + rn[:, None], mask=ok, other=0.0)
            acc += u2[None, :] * q
    tl.store(out_ptr + out, acc, mask=ok)


@triton.autotune(configs=_configs(_DOWN_CONFIGS), key=["H", "D", "ADD", "F16"],
                 prune_configs_by=_PRUNE, **_TUNE)
@triton.jit
def _down_kernel(z_ptr, dh_ptr, dl_ptr, out_ptr, add_ptr, zmax_ptr, d_scale, M, H,
                 D: tl.constexpr, ADD: tl.constexpr, F16: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm, rn = _tile(D, BM, BN)                                   # ablations, model features
    row_ok, col_ok = rm < M, rn < D
    z_scale = _pow2_scale(zmax_ptr, F16)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    for k0 in range(0, H, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < H
        z = tl.load(z_ptr + rm[:, None].to(tl.int64) * H + rk[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = rn[:, None] * H + rk[None, :]                       # D: [D, H]
        w_ok = col_ok[:, None] & k_ok[None, :]
        acc = _dot3(tl.load(dh_ptr + w, mask=w_ok, other=0.0),
                    tl.load(dl_ptr + w, mask=w_ok, other=0.0), z, acc, z_scale, F16)
    if F16:
        acc = acc * (1.0 / (z_scale * d_scale))
    _store_delta(acc, out_ptr, add_ptr, add_ptr, add_ptr, add_ptr, add_ptr, rm, rm, rn, M, 1,
                 D, ADD, False)


@triton.autotune(configs=_configs(_ENTRY_CONFIGS), key=["H", "D", "HAS_Q", "F16"],
                 prune_configs_by=_PRUNE, **_TUNE)
@triton.jit
def _entry_down_kernel(alpha_ptr, beta_ptr, ks_ptr, lp_ptr, rp_ptr, ql_ptr, qr_ptr, a_ptr, b_ptr,
                       dh_ptr, dl_ptr, out_ptr, u1_ptr, v_ptr, u2_ptr, q_ptr,
                       lpm_ptr, rpm_ptr, top_ptr, d_scale,
                       M, H, per_input, stride_q, stride_ab,
                       D: tl.constexpr, HAS_Q: tl.constexpr, F16: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # one program: BM ablations of ONE input (so its per-input rows load as vectors)
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(D, BN)
    blocks = tl.cdiv(per_input, BM)
    inp = (pid // n_tiles) // blocks
    kk = ((pid // n_tiles) % blocks) * BM + tl.arange(0, BM)            # ablation index
    rn = (pid % n_tiles) * BN + tl.arange(0, BN)
    row_ok, col_ok = kk < per_input, rn < D
    rm = inp * per_input + kk
    ch = tl.load(ks_ptr + kk, mask=row_ok, other=0)                      # ablated channel
    alpha = tl.load(alpha_ptr + rm, mask=row_ok, other=0.0)
    beta = tl.load(beta_ptr + rm, mask=row_ok, other=0.0)
    z_scale = 1.0
    if F16:   # per ablation, a bound on max|dz|: |a||dR| + |dL|(|b| + |dR|), from row maxima
        # (names of their own: a name the loop below re-binds must keep its type)
        top_l = tl.abs(alpha) * tl.load(lpm_ptr + ch, mask=row_ok, other=0.0) \
            + tl.abs(beta) * tl.load(top_ptr + 4 * inp)
        top_r = tl.abs(alpha) * tl.load(rpm_ptr + ch, mask=row_ok, other=0.0) \
            + tl.abs(beta) * tl.load(top_ptr + 4 * inp + 1)
        bound = tl.load(top_ptr + 4 * inp + 2) * top_r \
            + top_l * (tl.load(top_ptr + 4 * inp + 3) + top_r)
        z_scale = _pow2_of(bound)[:, None]                               # [BM, 1]
    alpha, beta = alpha[:, None], beta[:, None]
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    for k0 in range(0, H, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < H
        ok = row_ok[:, None] & k_ok[None, :]
        p = ch[:, None] * H + rk[None, :]
        ql = tl.load(ql_ptr + inp * stride_q + rk, mask=k_ok, other=0.0)[None, :]
        qr = tl.load(qr_ptr + inp * stride_q + rk, mask=k_ok, other=0.0)[None, :]
        a = tl.load(a_ptr + inp * stride_ab + rk, mask=k_ok, other=0.0)[None, :]
        b = tl.load(b_ptr + inp * stride_ab + rk, mask=k_ok, other=0.0)[None, :]
        d_left = alpha * tl.load(lp_ptr + p, mask=ok, other=0.0) + beta * ql
        d_right = alpha * tl.load(rp_ptr + p, mask=ok, other=0.0) + beta * qr
        z = a * d_right + d_left * (b + d_right)
        w = rn[:, None] * H + rk[None, :]
        w_ok = col_ok[:, None] & k_ok[None, :]
        acc = _dot3(tl.load(dh_ptr + w, mask=w_ok, other=0.0),
                    tl.load(dl_ptr + w, mask=w_ok, other=0.0), z, acc, z_scale, F16)
    if F16:
        acc = acc * (1.0 / (tl.trans(z_scale) * d_scale))
    rm = tl.where(row_ok, rm, M)                                         # masked rows: none
    _store_delta(acc, out_ptr, out_ptr, u1_ptr, v_ptr, u2_ptr, q_ptr, ch, rm, rn, M, per_input,
                 D, 2, HAS_Q)



def lr_dz(rows: Tensor, L: Split, R: Split, a: Tensor, b: Tensor, per_input: int,
          inner: int = 1, xmax: Tensor | None = None, zeroed: Tensor | None = None
          ) -> tuple[Tensor, Tensor | None]:
    """`dz = a * dR + dL * (b + dR)`, `[dL | dR] = rows @ [L^T | R^T]`.

    Args:
        rows: `[M, d]`, rows `(i * per_input + k) * inner + s`: ablation `k` of input
            `i * inner + s` (with `inner = 1`, rows `i * per_input + k`).
        L, R: `split_weight` of the layer's `L` and `R` (`[H, d]`), both TF32 or both f16.
        a, b: the clean `L u` and `R u` of the layer, `[inputs, H]` (row stride free).
        per_input: ablations per input; inner: inputs interleaved within each ablation's
            rows (positions of a sequence, each ablation carried at all of them).
        xmax: `max|rows|`, if known; zeroed: a one-element float32 tensor holding 0 to take
            `max|dz|` (else a new one).

    Returns:
        `dz [M, H]`, and (float16 halves) `max|dz|` as a one-element tensor, else None.
    """
    rows = rows.reshape(-1, rows.shape[-1]).contiguous()
    M, D = rows.shape
    H = L.hi.shape[0]
    f16 = L.hi.dtype == torch.float16
    z = torch.empty(M, H, device=rows.device, dtype=rows.dtype)
    xmax = (amax(rows) if xmax is None else xmax) if f16 else z
    zmax = max_slot(zeroed, rows.device) if f16 else None
    _lr_dz_kernel[_grid(M, H)](rows, L.hi, L.lo, R.hi, R.lo, a, b, z, xmax,
                               z if zmax is None else zmax, L.scale, R.scale, M, H, per_input,
                               inner, a.stride(0), D=D, F16=f16)
    return z, zmax


def down(z: Tensor, D_: Split, add: Tensor | None = None, zmax: Tensor | None = None
         ) -> Tensor:
    """`z @ D^T (+ add)`: `z [M, H]`, `D_ = split_weight(D)` (`[d, H]`), `add [M, d]`;
    `zmax`: `max|z|` (float16 halves; computed here if not given)."""
    M, H = z.shape
    D = D_.hi.shape[0]
    f16 = D_.hi.dtype == torch.float16
    if f16 and zmax is None:
        zmax = amax(z)
    out = torch.empty(M, D, device=z.device, dtype=z.dtype)
    add = out if add is None else add.reshape(M, D).contiguous()
    _down_kernel[_grid(M, D)](z, D_.hi, D_.lo, out, add, z if zmax is None else zmax,
                              D_.scale, M, H, D=D, ADD=0 if add is out else 1, F16=f16)
    return out


def entry_down(alpha: Tensor, beta: Tensor, ks: Tensor, lp: Tensor, rp: Tensor,
               ql: Tensor, qr: Tensor, a: Tensor, b: Tensor, D_: Split,
               u1: Tensor, v: Tensor, u2: Tensor | None, q: Tensor | None,
               lp_max: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """`delta = u1 V[k] (+ u2 q) + D dz` for the layer after the ablated one, whose
    `dz = a * dR + dL * (b + dR)` with `dL = alpha (L P)_k + beta (L q)` (and `dR` alike) is
    made tile by tile, never stored.

    Args:
        alpha, beta: `[inputs, K]` coefficients of the rank-2 input perturbation.
        ks: the `K` ablated channels (long).
        lp, rp: `(L P)^T` and `(R P)^T`, `[H_ablated, H]`, rows indexed by channel.
        ql, qr: `L q` and `R q` per input, `[inputs, H]` (row stride free, same for both).
        a, b: the clean `L u`, `R u` of the layer, `[inputs, H]` (row stride free).
        D_: `split_weight(D)` of the layer, `[d, H]`.
        u1, v, u2, q: the residual's own perturbation `u1 V[k] + u2 q` (`u1`, `u2`:
            `[inputs, K]`; `V [H_ablated, d]`, `q [inputs, d]`); `u2`, `q` may be None.
        lp_max: `max|lp|` and `max|rp|` per row, if precomputed (float16 halves only).

    Returns:
        `delta [inputs * K, d]`, rows `i * K + k`.
    """
    n, K = alpha.shape
    M, H, D = n * K, lp.shape[1], D_.hi.shape[0]
    assert ql.stride() == qr.stride() and a.stride() == b.stride()
    f16 = D_.hi.dtype == torch.float16
    out = torch.empty(M, D, device=alpha.device, dtype=alpha.dtype)
    lpm = rpm = top = out
    if f16:            # row maxima for the per-ablation scale: channels' and inputs'
        lpm, rpm = lp_max if lp_max is not None else (lp.abs().amax(-1), rp.abs().amax(-1))
        top = torch.stack([torch.linalg.vector_norm(t, float("inf"), dim=-1)
                           for t in (ql, qr, a, b)], -1).contiguous()      # [n, 4]
    has_q = u2 is not None
    grid = lambda meta: (n * triton.cdiv(K, meta["BM"]) * triton.cdiv(D, meta["BN"]),)  # noqa: E731
    _entry_down_kernel[grid](
        alpha.contiguous(), beta.contiguous(), ks, lp, rp, ql, qr, a, b, D_.hi, D_.lo, out,
        u1.contiguous(), v, u2.contiguous() if has_q else u1, q.contiguous() if has_q else v,
        lpm, rpm, top, D_.scale, M, H, K, ql.stride(0), a.stride(0), D=D, HAS_Q=has_q,
        F16=f16)
    return out

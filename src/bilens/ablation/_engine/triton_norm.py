"""A norm's change under an ablation, `N(r + dh) - N(r)`, as one Triton kernel per call.

`sequence_steps.norm_change` written row by row: per row of `dh` (one ablation at one
position), with the clean input `r` (centred for LayerNorm) and statistic `s` of its
position,

    dh       <- dh - mean(dh)                                 (LayerNorm only)
    ds2      = (2 r.dh + |dh|^2) / d                          (`core.norms.perturbed_scale`)
    s'       = sqrt(s^2 + ds2)
    out      = gamma (dh / s' + r (1/s' - 1/s)),   1/s' - 1/s = -ds2 / (s s' (s + s'))

or, with the statistic held, `gamma dh / s`. The Triton backend ran it as an inductor
step, whose host side (its guards and wrapper, about 150 us a call on the H200) cost more
than its kernel in the small batches of a subset (docs/lm-verification.md, session 10);
this kernel is one launch, and it also gives `max|out|`, the float16 scale of the product
that reads `out` next (`triton_ops.down` and `lr_dz` otherwise make it with one more
reduction). Runs under Triton's interpreter (`tests/triton_interpreted.py`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from bilens.core.triton_gemm import max_slot

_ROWS = 16            # rows per program (each row one d_model); fewer where d_model > 256


@triton.jit
def _norm_change_kernel(dh_ptr, s_ptr, r_ptr, g_ptr, out_ptr, top_ptr, n_rows, KS, S, d,
                        s_sb, s_ss, r_sb, r_ss, tiny, CENTRE: tl.constexpr,
                        FROZEN: tl.constexpr, TOP: tl.constexpr, BR: tl.constexpr,
                        BD: tl.constexpr):
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)  # (i, k, s); 64-bit offsets
    cols = tl.arange(0, BD)
    ok_r, ok_c = rows < n_rows, cols < d
    ok = ok_r[:, None] & ok_c[None, :]
    i, sp = rows // KS, rows % S                                      # sequence, position
    x = tl.load(dh_ptr + rows[:, None] * d + cols[None, :], mask=ok, other=0.0)
    if CENTRE:
        x = tl.where(ok, x - (tl.sum(x, 1) / d)[:, None], 0.0)
    s = tl.load(s_ptr + i * s_sb + sp * s_ss, mask=ok_r, other=1.0)[:, None]
    gamma = tl.load(g_ptr + cols, mask=ok_c, other=0.0)[None, :]
    if FROZEN:
        out = gamma * (x / s)
    else:
        r = tl.load(r_ptr + i[:, None] * r_sb + sp[:, None] * r_ss + cols[None, :], mask=ok,
                    other=0.0)
        ds2 = ((2 * tl.sum(x * r, 1) + tl.sum(x * x, 1)) / d)[:, None]
        s_new = tl.sqrt(tl.maximum(ds2 + s * s, tiny))
        out = gamma * (x / s_new + r * (-ds2 / (s * s_new * (s + s_new))))
    tl.store(out_ptr + rows[:, None] * d + cols[None, :], out, mask=ok)
    if TOP:
        tl.atomic_max(top_ptr, tl.max(tl.max(tl.abs(tl.where(ok, out, 0.0)), 1), 0))


def norm_change(centre: bool, frozen: bool, dh: Tensor, s: Tensor, r: Tensor, gamma: Tensor,
                top: bool = False, zeroed: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """`sequence_steps.norm_change` (same arguments: `dh [b, K, S, d]`, `s [b, 1, S, 1]`,
    `r [b, 1, S, d]`, `gamma [d]`, float32, the last axis of `r` contiguous) and, with
    `top`, `max|out|` as a one-element tensor (else None): `zeroed`, a one-element float32
    tensor holding 0 given to take it, or a new one. `dh` is not changed."""
    b, K, S, d = dh.shape
    dh = dh.contiguous()
    assert r.stride(-1) == 1 and dh.dtype == torch.float32, "float32, r's last axis contiguous"
    out = torch.empty_like(dh)
    most = max_slot(zeroed, dh.device) if top else None
    n, BD = b * K * S, triton.next_power_of_2(d)
    BR = max(1, min(_ROWS, 4096 // BD))                  # at most 4,096 elements a program
    _norm_change_kernel[(triton.cdiv(n, BR),)](
        dh, s, r, gamma.contiguous(), out, out if most is None else most, n, K * S, S, d,
        s.stride(0), s.stride(2), r.stride(0), r.stride(2), torch.finfo(torch.float32).tiny,
        CENTRE=centre, FROZEN=frozen, TOP=top, BR=BR, BD=BD)
    return out, most

"""The elementwise steps of the transformer's node oracle (`sequence_plan.SequencePlan`),
each accurate relative to the size of the change it computes: the norm's change and the
attention pattern's change. Plain torch functions; the plan compiles them under
`backend="compile"` (`steps.Kernels.step`), and `triton_norm` writes the first as one
kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bilens.core.norms import inverse_scale_change, perturbed_scale


def norm_change(centre: bool, frozen: bool, dh: Tensor, s: Tensor, r: Tensor, gamma: Tensor
                ) -> Tensor:
    """`N(r + dh) - N(r)` (`dh` centred first for LayerNorm, whose beta cancels; `r` the
    centred clean input, `s` its statistic): `gamma (dh / s' + r (1/s' - 1/s))`, or with
    `frozen` `gamma dh / s`; no cancellation (`core/norms.py`)."""
    if centre:
        dh = dh - dh.mean(-1, keepdim=True)
    if frozen:
        return gamma * (dh / s)
    s_new, ds2 = perturbed_scale(s, torch.linalg.vecdot(dh, r)[..., None],
                                 torch.linalg.vecdot(dh, dh)[..., None], dh.shape[-1])
    out = (dh / s_new).addcmul_(inverse_scale_change(s, s_new, ds2), r)       # one temporary
    return out.mul_(gamma)


def pattern_change(P: Tensor, dS: Tensor) -> Tensor:
    """`softmax(S + dS) - softmax(S)` from the clean pattern `P` and the scores' change
    `dS`, accurate relative to its own size: `P expm1(dS - dL)`, `dL = log sum P e^dS`, as
    `log1p(sum P expm1(dS))` where every `|dS| < 0.5` (relative accuracy), else a logsumexp
    (no overflow, and no `1 + x` near 0). `dS - dL` is clamped at 88 so that `expm1` stays
    finite, which keeps masked keys (`P = 0`) at 0 when `dL` is very negative (unclamped,
    `0 * inf` there was NaN); the clamp changes only keys whose clean weight is below `e^-88`
    (subnormal in float32), which then come out too small (the Triton kernel computes them
    in full). Consumes `dS` (in place)."""
    small = dS.clamp(max=1.0).expm1_().mul_(P).sum(-1, keepdim=True).log1p_()
    large = torch.logsumexp(P.log() + dS, -1, keepdim=True)
    lo, hi = torch.aminmax(dS, dim=-1, keepdim=True)
    dL = torch.where((hi < 0.5) & (lo > -0.5), small, large)
    return dS.sub_(dL).clamp_(max=88.0).expm1_().mul_(P)

"""The three norms of SPEC §1, with their statistics exposed by name.

    none:  N(r) = r
    rms:   N(r) = gamma * r / s,               s = sqrt(mean(r^2) + eps)
    layer: N(r) = gamma * (r - mu) / s + beta,  mu = mean(r), s = sqrt(mean((r - mu)^2) + eps)

Statistics are per sample, over the feature (last) axis. Passing `scale` freezes `s`
at a value computed elsewhere (a clean run): the norm is then linear in `r`. LayerNorm
keeps its centering live, because centering is linear already (SPEC §4 "frozen"); pass
`mean` as well to freeze `mu` too.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


class Norm(nn.Module):
    """One normalization over `d_model` features: `none`, `rms` or `layer`."""

    def __init__(self, kind: str, d_model: int, eps: float, learnable_gain: bool = True):
        super().__init__()
        self.kind = kind
        self.eps = eps
        if kind == "none":
            return
        gain = torch.ones(d_model)
        if learnable_gain:
            self.weight = nn.Parameter(gain)
        else:
            self.register_buffer("weight", gain)
        if kind == "layer":
            bias = torch.zeros(d_model)
            if learnable_gain:
                self.bias = nn.Parameter(bias)
            else:
                self.register_buffer("bias", bias)

    def forward(
        self,
        r: Float[Tensor, "batch d_model"],
        scale: Float[Tensor, " batch"] | None = None,
        mean: Float[Tensor, " batch"] | None = None,
    ) -> tuple[Float[Tensor, "batch d_model"], Float[Tensor, " batch"], Float[Tensor, " batch"]]:
        """Normalize `r`; return `(N(r), s, mu)` (`mu` is zeros unless LayerNorm).

        `scale`/`mean`, when given, replace the statistics computed from `r`.
        """
        if self.kind == "none":
            ones = r.new_ones(r.shape[0])
            return r, ones, torch.zeros_like(ones)
        if self.kind == "rms":
            mu = r.new_zeros(r.shape[0])
            centered = r
        else:
            mu = r.mean(dim=-1) if mean is None else mean                     # [B]
            centered = r - mu[:, None]                                        # [B, d]
        s = (centered.pow(2).mean(dim=-1) + self.eps).sqrt() if scale is None else scale
        y = self.weight * centered / s[:, None]                               # [B, d]
        if self.kind == "layer":
            y = y + self.bias
        return y, s, mu

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, eps={self.eps}"

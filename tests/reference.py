"""Slow references written from SPEC, one sample at a time, in float64.

They read only the checkpoint tensor names of SPEC §6 (a state dict), never the model
code, so a test that compares against them can catch a fast path that is wrong.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _norm(kind: str, r: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float,
          frozen_s: float | None = None) -> tuple[Tensor, float]:
    """SPEC §1 for one vector r [d]. With frozen_s, s is that constant; LayerNorm's
    centering stays (SPEC §4 "frozen")."""
    d = r.shape[0]
    if kind == "none":
        return r.clone(), 1.0
    if kind == "rms":
        s = math.sqrt(sum(float(v) ** 2 for v in r) / d + eps)
        s = s if frozen_s is None else frozen_s
        return torch.stack([gamma[i] * r[i] / s for i in range(d)]), s
    mu = sum(float(v) for v in r) / d
    s = math.sqrt(sum((float(v) - mu) ** 2 for v in r) / d + eps)
    s = s if frozen_s is None else frozen_s
    return torch.stack([gamma[i] * (r[i] - mu) / s + beta[i] for i in range(d)]), s


def forward_one(sd: dict[str, Tensor], cfg: dict, x: Tensor,
                ablate: tuple[int, int, float] | None = None,
                frozen: list[float] | None = None) -> tuple[Tensor, list[Tensor], list[float]]:
    """Logits for one input x [d_in], following SPEC §1 line by line.

    Args:
        ablate: (layer, channel, value): z_{layer, channel} := value.
        frozen: one s per norm (in order of use) to hold fixed instead of recomputing.

    Returns:
        (logits [n_out], z per layer, s per norm)
    """
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    kind, post = cfg["norm"], cfg["norm_position"] == "post"
    stats: list[float] = []

    def norm(name: str, r: Tensor) -> Tensor:
        i = len(stats)
        y, s = _norm(kind, r, sd.get(f"{name}.weight"), sd.get(f"{name}.bias"), cfg["eps"],
                     None if frozen is None else frozen[i])
        stats.append(s)
        return y

    h = sd["embed.weight"] @ x
    zs = []
    for l in range(cfg["n_layers"]):
        L, R, D = sd[f"layers.{l}.L"], sd[f"layers.{l}.R"], sd[f"layers.{l}.D"]
        u = h if post else norm(f"layers.{l}.norm", h)
        z = torch.stack([(L[k] @ u) * (R[k] @ u) for k in range(L.shape[0])])
        if ablate is not None and ablate[0] == l:
            z = z.clone()
            z[ablate[1]] = ablate[2]
        zs.append(z)
        h = h + D @ z
        if post:
            h = norm(f"layers.{l}.norm", h)
    if not post:
        h = norm("final_norm", h)
    return sd["head.weight"] @ h, zs, stats

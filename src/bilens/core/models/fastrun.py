"""The clean run the fast paths use: `BilinearNet.run` with no intervention, written into
preallocated `[B, L, H]` tensors under `no_grad` instead of stacked afterwards.

Attribution and exhaustive ablation start from one clean run of every input; at large
batches the stacking copies of `run` cost a measurable share of a forward pass (the CPU and
H200 benchmarks of docs/benchmarks.md), so those paths call `clean_run`. The tests hold it
equal to `run`, which stays the readable reference.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.core.models.mlp import BilinearNet, Run


@torch.no_grad()
def clean_run(model: BilinearNet, x: Float[Tensor, "batch d_in"]) -> Run:
    """`model.run(x)` (the real network, every intermediate), allocation-light.

    With gradients enabled by the caller it falls back to `model.run` (autograd needs the
    stacked tensors), so it is always safe to call.
    """
    cfg = model.config
    post = cfg.norm_position == "post"
    shape = (x.shape[0], cfg.n_layers, cfg.d_hidden)
    left_all, right_all, z_all = (x.new_empty(shape) for _ in range(3))
    us, norms = [], []
    h = model.embed(x)                                             # h0 = E x      [B, d]
    for l, layer in enumerate(model.layers):
        if post:
            u = h
        else:
            u, s, mu = model.norm(l)(h)
            norms.append((h, s, mu))
        left = torch.mm(u, layer.L.T, out=left_all[:, l])          # L u           [B, H]
        right = torch.mm(u, layer.R.T, out=right_all[:, l])        # R u
        z = torch.mul(left, right, out=z_all[:, l])                # z
        h = torch.addmm(h, z, layer.D.T)                           # r = h + D z
        if post:
            r = h
            h, s, mu = model.norm(l)(r)
            norms.append((r, s, mu))
        us.append(u)
    if post:
        final = h
    else:
        final, s, mu = model.final_norm(h)
        norms.append((h, s, mu))
    resid, scale, mean = (torch.stack(t, 1) for t in zip(*norms, strict=True))
    return Run(logits=model.head(final), u=torch.stack(us, 1), left=left_all, right=right_all,
               z=z_all, resid=resid, scale=scale, mean=mean, final=final)

"""`mode="renorm"`: the live prediction with the first norm an ablation hits recomputed exactly.

Ablating channel `(l, k)` adds `delta = D_l[:, k] c` to the residual, `c = b - z_{l,k}`.
The norm that first sees `delta` reacts to it non-linearly (its `s` moves, the seed's
`ds/s ~ (r . delta)/|r|^2`), and on trained networks that reaction is most of the error of
the first-order (`live`) prediction. It can be computed exactly, for every channel at once,
from a few `[B, d] @ [d, H]` products, because `delta` is a known column of `D` times `c`:

    s'^2 = s^2 + (2 c r.D_k + c^2 |D_k|^2) / d                  (RMS; LayerNorm: r, D_k centered)
    N(r + delta) - N(r) = gamma * r (1/s' - 1/s) + gamma * D_k c / s'

and the rest of the network is linearized as in `live`, from that norm's output:

- post-norm: every path goes through layer `l`'s own norm, so
  `predicted = g_N . (N_l(r + delta) - N_l(r))`, `g_N` the live gradient at its output;
- pre-norm: `delta` reaches the final norm directly along the residual (and later layers
  through their input norms): the direct path takes the exact final norm, the others stay
  live: `predicted = c g_live - c g_direct + g_f . (N_f(h + delta) - N_f(h))`.

For a channel of the last layer and a target linear in the logits this is the *real*
ablation, exactly (every position and norm); as `b -> z` it tends to `live`. It is not a
gradient, so it has no `gradients(mode=...)` counterpart.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.attribution.backward import backward
from bilens.core.models.mlp import BilinearNet, Run
from bilens.core.norms import inverse_scale_change, perturbed_scale
from bilens.core.targets import Target


@torch.no_grad()
def renorm_effects(
    model: BilinearNet,
    run: Run,
    target: Target,
    baseline: Float[Tensor, "batch layer d_hidden"] | None = None,
) -> Float[Tensor, "batch layer d_hidden"]:
    """Predicted effect of setting each channel to its baseline, first norm exact.

    Args:
        model: the network that produced `run`.
        run: the clean run.
        target: the resolved target.
        baseline: `b` broadcastable to `run.z`; None is zero.

    Returns:
        `predicted [B, n_layers, d_hidden]`.

    Example:
        >>> from bilens.core.config import ModelConfig
        >>> from bilens.core.targets import resolve_target
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> run = model.run(torch.randn(5, 8))
        >>> p = renorm_effects(model, run, target=resolve_target("predicted", run.logits))
        >>> p.shape
        torch.Size([5, 2, 32])
    """
    cfg = model.config
    c = -run.z if baseline is None else baseline - run.z                   # b - z  [B, L, H]
    g_live, at_norm = backward(model, run, target, "live")
    if cfg.norm_position == "post":
        # every path from z_l runs through layer l's own norm, so live g is that norm's slope
        return torch.stack([_norm_change(model, run, i, at_norm[i], model.layers[i].D, c[:, i],
                                         slope=g_live[:, i])[0]
                            for i in range(cfg.n_layers)], 1)
    final = cfg.n_layers
    out = []
    for i, layer in enumerate(model.layers):
        exact, slope = _norm_change(model, run, final, at_norm[final], layer.D, c[:, i])
        out.append(c[:, i] * (g_live[:, i] - slope) + exact)              # swap the direct path
    return torch.stack(out, 1)


def _norm_change(
    model: BilinearNet,
    run: Run,
    i: int,
    g_out: Float[Tensor, "batch d_model"],
    D: Float[Tensor, "d_model d_hidden"],
    c: Float[Tensor, "batch d_hidden"],
    slope: Float[Tensor, "batch d_hidden"] | None = None,
) -> tuple[Float[Tensor, "batch d_hidden"], Float[Tensor, "batch d_hidden"]]:
    """`g_out . (N_i(r + D[:, k] c_k) - N_i(r))` for every channel `k`, exactly in `c`, and
    its slope in `c` at 0 (the live gradient along that path, `D_k . J^T g_out`); pass the
    slope when it is known already to save one product."""
    norm = model.norm(i)
    if norm.kind == "none":
        slope = g_out @ D if slope is None else slope
        return c * slope, slope
    r = run.resid[:, i]                                                    # [B, d]
    s = run.scale[:, i, None]                                              # [B, 1]
    d = r.shape[-1]
    if norm.kind == "layer":                                               # centering is linear
        r = r - run.mean[:, i, None]
        D = D - D.mean(0)
    gy = g_out * norm.weight                                               # [B, d]
    r_dot = r @ D                                                          # r . D_k     [B, H]
    sq = (D * D).sum(0)                                                    # |D_k|^2     [H]
    s_new, ds2 = perturbed_scale(s, c * r_dot, c * c * sq, d)               # s'          [B, H]
    inv_change = inverse_scale_change(s, s_new, ds2)                        # 1/s' - 1/s
    along_r = (gy * r).sum(-1, keepdim=True)                                # [B, 1]
    if slope is None:
        along_d = gy @ D                                                    # [B, H]
        slope = along_d / s - along_r * r_dot / (d * s**3)                  # d exact / dc at 0
    else:
        along_d = s * slope + along_r * r_dot / (d * s**2)                 # the same, inverted
    exact = along_r * inv_change + c * along_d / s_new
    return exact, slope

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
                                         slope=g_live[:, i])
                            for i in range(cfg.n_layers)], 1)
    final = cfg.n_layers
    return torch.stack([_swap_norm(model, run, final, at_norm[final], layer.D, c[:, i],
                                   g_live[:, i])                        # swap the direct path
                        for i, layer in enumerate(model.layers)], 1)


def _centred(model: BilinearNet, run: Run, i: int, D: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Norm `i`'s input `r` `[B, d]`, its `s` `[B, 1]` and the columns `D`, centred for
    LayerNorm (its centring is linear, so the change of `N_i` sees centred vectors). The
    norm axis is `run`'s second; more axes may follow it (`[B, norm, T, d]`: `r [B, T, d]`)."""
    r, s = run.resid[:, i], run.scale[:, i][..., None]
    if model.norm(i).kind == "layer":
        return r - run.mean[:, i][..., None], s, D - D.mean(0)
    return r, s, D


def _norm_change(
    model: BilinearNet,
    run: Run,
    i: int,
    g_out: Float[Tensor, "batch d_model"],
    D: Float[Tensor, "d_model d_hidden"],
    c: Float[Tensor, "batch d_hidden"],
    slope: Float[Tensor, "batch d_hidden"],
) -> Float[Tensor, "batch d_hidden"]:
    """`g_out . (N_i(r + D[:, k] c_k) - N_i(r))` for every channel `k`, exactly in `c`, given
    its slope in `c` at 0 (the live gradient along that path, `D_k . J^T g_out`)."""
    norm = model.norm(i)
    if norm.kind == "none":
        return c * slope
    r, s, D = _centred(model, run, i, D)
    d = r.shape[-1]
    gy = g_out * norm.weight                                               # [B, d]
    r_dot = r @ D                                                          # r . D_k     [B, H]
    sq = (D * D).sum(0)                                                    # |D_k|^2     [H]
    s_new, ds2 = perturbed_scale(s, c * r_dot, c * c * sq, d)               # s'          [B, H]
    inv_change = inverse_scale_change(s, s_new, ds2)                        # 1/s' - 1/s
    along_r = (gy * r).sum(-1, keepdim=True)                                # [B, 1]
    along_d = s * slope + along_r * r_dot / (d * s**2)                     # gy . D_k    [B, H]
    return along_r * inv_change + c * along_d / s_new


def _swap_norm(
    model: BilinearNet,
    run: Run,
    i: int,
    g_out: Float[Tensor, "batch d_model"],
    D: Float[Tensor, "d_model d_hidden"],
    c: Float[Tensor, "batch d_hidden"],
    g_live: Float[Tensor, "batch d_hidden"],
) -> Float[Tensor, "batch d_hidden"]:
    """The live prediction `c g_live` with its path through norm `i` swapped for that norm's
    exact change: `c g_live - c slope + g_out . (N_i(r + D_k c) - N_i(r))` for every `k`.

    With `gy = gamma g_out`, `slope = gy.D_k / s - (gy.r)(r.D_k) / (d s^3)` and the exact
    change `(gy.r)(1/s' - 1/s) + c gy.D_k / s'`, the two `gy.D_k` terms share one
    `1/s' - 1/s` (no cancellation between them), and the rest runs in place (on `[B, H]`
    each temporary is a pass over fresh memory):

        c g_live + (c gy.D_k + gy.r)(1/s' - 1/s) + c (r.D_k)(gy.r) / (d s^3)
    """
    norm = model.norm(i)
    if norm.kind == "none":                          # linear: the exact change is the slope
        return c * g_live
    r, s, D = _centred(model, run, i, D)
    d = r.shape[-1]
    gy = g_out * norm.weight                                               # [B, d]
    x = (r @ D).mul_(c)                                                    # c r . D_k   [B, H]
    s_new, ds2 = perturbed_scale(s, x, (c * c).mul_((D * D).sum(0)), d)    # s'          [B, H]
    along_r = (gy * r).sum(-1, keepdim=True)                               # gy . r      [B, 1]
    out = (gy @ D).mul_(c).add_(along_r).mul_(inverse_scale_change(s, s_new, ds2))
    out.add_(x.mul_(along_r / (d * s**3)))
    return out.addcmul_(c, g_live)

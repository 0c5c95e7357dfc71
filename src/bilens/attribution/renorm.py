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
    out: Float[Tensor, "batch d_hidden"] | None = None,
    work: Float[Tensor, "5 batch d_hidden"] | None = None,
) -> Float[Tensor, "batch d_hidden"]:
    """The live prediction `c g_live` with its path through norm `i` swapped for that norm's
    exact change: `c g_live - c slope + g_out . (N_i(r + D_k c) - N_i(r))` for every `k`,
    written into `out` where given (shaped like `c`; a view, or `c` itself, is fine), with
    its temporaries in `work` where given (so that layer after layer reuses them).

    With `gy = gamma g_out`, `slope = gy.D_k / s - (gy.r)(r.D_k) / (d s^3)` and the exact
    change `(gy.r)(1/s' - 1/s) + c gy.D_k / s'`, the two `gy.D_k` terms share one
    `1/s' - 1/s`. Written relative to `s`, with `sigma = 1 / (s sqrt d)`,
    `a = (c sigma)(r.D_k sigma)` and `u = s'^2/s^2 - 1 = 2a + (c sigma)^2 |D_k|^2`, that is
    `1/s' - 1/s = -(u/s) / (1 + u + sqrt(1 + u))` (no cancellation: `sqrt(1 + u) = s'/s`), and

        c g_live + (gy.r/s) a - (c gy.D_k/s + gy.r/s) u / (1 + u + sqrt(1 + u))

    The row factors `2 sigma` and `1/s` ride on the products' inputs (`[B, d]`, a quarter
    of `[B, H]`), the two products are one, and the rest is thirteen passes over `[B, H]`,
    in place where they can be (each fresh temporary is one more pass over new memory).
    """
    norm = model.norm(i)
    if norm.kind == "none":                          # linear: the exact change is the slope
        return torch.mul(c, g_live, out=out)
    r, s, D = _centred(model, run, i, D)
    d = r.shape[-1]
    sigma = s.mul(d ** 0.5).reciprocal_()                                  # 1/(s sqrt d) [B, 1]
    gy = (g_out * norm.weight).div_(s)                                     # gamma g_out / s
    along_r = (gy * r).sum(-1, keepdim=True)                               # gy.r / s    [B, 1]
    w = c.new_empty(5, *c.shape) if work is None else work
    x, y, u, v, den = w.unbind(0)                                          # [B, H] each
    torch.matmul(torch.cat([r * (2 * sigma), gy]), D, out=w[:2].flatten(0, 1))
    torch.mul(c, sigma, out=u)                                             # x: 2 sigma r.D_k
    x.mul_(u)                                                              # 2a
    sq = (D * D).sum(0)                                                    # |D_k|^2     [H]
    torch.addcmul(x, u.square_(), sq, out=u)                               # u = 2a + ...
    torch.add(u, 1, out=v)                                                 # s'^2 / s^2
    torch.clamp_min(v, torch.finfo(v.dtype).tiny, out=den).sqrt_().add_(v)  # 1 + u + s'/s
    u.div_(den)
    torch.addcmul(along_r, y, c, out=y)                                    # c gy.D_k/s + gy.r/s
    out = torch.mul(c, g_live, out=out)                                    # c's last read
    return out.addcmul_(x, along_r / 2).addcmul_(y, u, value=-1)

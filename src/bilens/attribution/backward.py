"""`d f / d z` for every channel from one clean run: the seed's backward loop, written out.

Starting from the head, `g = W^T d f/d logits`, the loop walks the network backwards:

    norm   (frozen) g <- J^T g,  J = diag(gamma / s)                           (rms)
                                 J = diag(gamma / s) (I - 1 1^T / d)            (layer)
           (live)   J = diag(gamma / s) (I - r r^T / (d s^2))                   (rms)
                    J = diag(gamma / s) (I - 1 1^T / d - x^ x^T / d),
                        x^ = (r - mu) / s                                       (layer)
    layer  d f / d z = D^T g_r;   bilinear: d z / d u = diag(R u) L + diag(L u) R
    resid  the residual adds the identity

`frozen` holds every norm's `s` at its clean value (the seed's linearization); `live` is
the true gradient. Both are batched matmuls over `[B, d]`; no per-sample loops.

`gradients_autograd` computes the same numbers with `torch.autograd` through
`BilinearNet.run(x, Intervention(z_offset=...))`; the tests hold the two to 1e-10 in float64.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.core.errors import BilensError
from bilens.core.models.intervention import Intervention
from bilens.core.models.mlp import BilinearNet, Run
from bilens.core.targets import Target

GRADIENT_MODES = ("frozen", "live")          # modes that are a gradient g (predicted = (b-z) g)
MODES = GRADIENT_MODES + ("renorm",)         # every attribution mode (`bilens.renorm`)
METHODS = ("explicit", "autograd")


def check_mode(mode: object, name: str = "mode", allowed: tuple[str, ...] = MODES) -> str:
    """Raise a `BilensError` unless `mode` is one of `allowed`."""
    if mode not in allowed:
        raise BilensError(f"{name}: expected one of {list(allowed)}, got {mode!r}; 'frozen' is "
                          f"the seed's frozen-statistics linearization, 'live' the exact "
                          f"gradient, 'renorm' live with the first norm hit recomputed exactly")
    return str(mode)


def norm_backward(
    model: BilinearNet,
    i: int,
    run: Run,
    g: Float[Tensor, "batch d_model"],
    mode: str,
) -> Float[Tensor, "batch d_model"]:
    """Pull `g = d f / d N_i(r)` back through norm `i`: returns `d f / d r` (`J^T g`).

    Args:
        model: the network (for `gamma`, the norm kind).
        i: norm index (layer `i`'s norm; `n_layers` is pre-norm's final norm).
        run: the clean run whose statistics define the linearization (the norm axis
            second; more axes may follow it, as the transformer's positions `[B, norm, T]`).
        g: gradient with respect to the norm's output, `[B, d_model]` (or `[B, T, d_model]`).
        mode: `"frozen"` (statistics constant) or `"live"` (statistics differentiated).
    """
    norm = model.norm(i)
    if norm.kind == "none":
        return g
    s = run.scale[:, i][..., None]                                   # [B, 1]
    a = g * norm.weight / s                                          # diag(gamma / s) g  [B, d]
    d = g.shape[-1]
    if norm.kind == "rms":
        if mode == "frozen":
            return a
        r = run.resid[:, i]                                          # [B, d]
        coef = torch.linalg.vecdot(r, a).unsqueeze(-1) / (d * s**2)
        return torch.addcmul(a, r, coef, value=-1)                   # (I - r r^T / (d s^2)) a
    a = a - a.mean(-1, keepdim=True)                                 # (I - 1 1^T / d) a
    if mode == "frozen":
        return a
    xhat = (run.resid[:, i] - run.mean[:, i][..., None]) / s         # [B, d]
    coef = torch.linalg.vecdot(xhat, a).unsqueeze(-1) / d
    return torch.addcmul(a, xhat, coef, value=-1)                    # ... - x^ x^T a / d


@torch.no_grad()
def gradients(
    model: BilinearNet,
    run: Run,
    target: Target,
    mode: str = "frozen",
) -> Float[Tensor, "batch layer d_hidden"]:
    """`g = d f / d z` for every channel, from an existing clean run (no second forward).

    Args:
        model: the network that produced `run`.
        run: `model.run(x)` on the clean inputs (no patch, no frozen statistics).
        target: the resolved target (`resolve_target(spec, run.logits, labels)`).
        mode: `"frozen"` or `"live"`.

    Returns:
        `g`, `[B, n_layers, d_hidden]`, in the run's dtype.

    Example:
        >>> from bilens.core.config import ModelConfig
        >>> from bilens.core.targets import resolve_target
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> run = model.run(torch.randn(5, 8))
        >>> g = gradients(model, run, target=resolve_target("predicted", run.logits), mode="live")
        >>> predicted = -run.z * g                                    # zero ablation
        >>> predicted.shape
        torch.Size([5, 2, 32])
    """
    check_mode(mode, allowed=GRADIENT_MODES)
    return backward(model, run, target, mode)[0]


def backward(
    model: BilinearNet,
    run: Run,
    target: Target,
    mode: str,
) -> tuple[Float[Tensor, "batch layer d_hidden"], dict[int, Float[Tensor, "batch d_model"]]]:
    """The loop behind `gradients`; also returns `d f / d N_i(.)`, the gradient at each
    norm's output, by norm index (what `bilens.renorm` continues from)."""
    cfg = model.config
    post = cfg.norm_position == "post"
    g = target.grad_logits(run.logits) @ model.head.weight              # W^T df/dlogits [B, d]
    at_norm: dict[int, Tensor] = {}
    if not post:
        at_norm[cfg.n_layers] = g
        g = norm_backward(model, cfg.n_layers, run, g, mode)            # final norm
    grads = g.new_empty(g.shape[0], cfg.n_layers, cfg.d_hidden)
    for i in reversed(range(cfg.n_layers)):
        layer = model.layers[i]
        if post:
            at_norm[i] = g
            g = norm_backward(model, i, run, g, mode)                   # g_r = d f / d r
        g_z = torch.mm(g, layer.D, out=grads[:, i])                     # D^T g_r       [B, H]
        if i == 0:
            break                                                        # d f / d h0 unused
        # d f / d u = (diag(R u) L + diag(L u) R)^T g_z                                 [B, d]
        g_u = torch.addmm((g_z * run.right[:, i]) @ layer.L, g_z * run.left[:, i], layer.R)
        if post:
            g = g + g_u                                                  # u = h: residual + layer
        else:
            at_norm[i] = g_u
            g = g + norm_backward(model, i, run, g_u, mode)             # u = N_l(h)
    return grads, at_norm


def gradients_autograd(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    target: Target,
    mode: str = "frozen",
    run: Run | None = None,
) -> tuple[Float[Tensor, "batch layer d_hidden"], Run]:
    """The same `g` as `gradients`, from `torch.autograd` (a second, differentiable forward).

    A zero `z_offset` with `requires_grad` is added to every `z`; `frozen` passes the clean
    run's `s` (detached) so the norms cannot differentiate it.

    Args:
        model: the network.
        inputs: clean inputs `[B, d_in]`.
        target: the resolved target.
        mode: `"frozen"` or `"live"`.
        run: the clean run, if already computed (needed for `frozen`'s statistics).

    Returns:
        `(g [B, n_layers, d_hidden], clean run)`.
    """
    check_mode(mode, allowed=GRADIENT_MODES)
    cfg = model.config
    if run is None and mode == "frozen":
        with torch.no_grad():
            run = model.run(inputs, check=False)
    scale = run.scale.detach() if mode == "frozen" else None
    offset = inputs.new_zeros(inputs.shape[0], cfg.n_layers, cfg.d_hidden, requires_grad=True)
    with torch.enable_grad():
        live = model.run(inputs, Intervention(scale=scale, z_offset=offset), check=False)
        (g,) = torch.autograd.grad(target(live.logits).sum(), offset)
    if run is None:
        run = _detached(live)
    return g, run


def _detached(run: Run) -> Run:
    return Run(**{name: value.detach() for name, value in vars(run).items()})

"""`renorm` for the transformer: the first norm each node reaches, exactly, per position.

From the clean run, the live `d f / d z` and the live gradients at the norms' outputs
(`attribution.sequence`): post-norm, layer `l`'s own MLP norm at `t` (every path runs
through it); pre-norm, the next norm at `t` (layer `l+1`'s attention norm, or the final
norm), whose path's live slope is swapped for the exact change (`attribution.renorm`).

Two backends give the same closed form: `"eager"` (torch operations, any device and dtype)
and `"triton"` (one kernel per layer, `attribution.triton_renorm`: the products and the
formula fused, float32 on CUDA). A Triton failure falls back to eager with one warning, and
the kernel is not tried again in that process.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import warnings
from collections.abc import Sequence
from types import SimpleNamespace

import torch
from torch import Tensor

from bilens.attribution.renorm import _norm_change, _swap_norm
from bilens.core.device import triton_available
from bilens.core.errors import BilensError
from bilens.core.models.transformer import BilinearTransformer, TransformerRun
from bilens.core.sequence import SequenceTarget

RENORM_BACKENDS = ("eager", "triton")
_FAILED: list[str] = []          # the kernel's failure in this process, if it failed (then eager)


def resolve_renorm_backend(backend: str | None, device: torch.device, dtype: torch.dtype,
                           used: bool = True) -> str:
    """The backend `renorm`'s closed form runs on: `"eager"` (the default) or `"triton"`,
    which needs CUDA, float32 and Triton; where it cannot run, eager, with one warning
    (none where `renorm` is not `used`: the other modes have no closed form)."""
    if backend is not None and backend not in RENORM_BACKENDS:
        raise BilensError(f"backend: expected one of {list(RENORM_BACKENDS)} for attribution, "
                          f"got {backend!r}")
    if backend in (None, "eager") or not used:
        return "eager"
    why = ("needs CUDA" if device.type != "cuda" else
           f"runs float32 only (the model is {dtype})" if dtype != torch.float32 else
           "needs Triton, which is not installed" if not triton_available() else None)
    if why is None:
        return "triton"
    warnings.warn(f"bilens: backend='triton' for renorm's closed form {why}; running it eager",
                  RuntimeWarning, stacklevel=3)
    return "eager"


def first_norms(model: BilinearTransformer) -> tuple[int, ...]:
    """The norm each layer's nodes reach first: pre-norm the next one (layer `l+1`'s
    attention norm, or the final norm), post-norm layer `l`'s own MLP norm."""
    L = model.config.n_layers
    pre = model.config.norm_position == "pre"
    return tuple(2 * (l + 1) if pre else 2 * l + 1 for l in range(L))


def renorm(model: BilinearTransformer, run: TransformerRun, tgt: SequenceTarget, c: Tensor,
           g_live: Sequence[Tensor], g_norm: dict[int, Tensor], backend: str = "eager",
           out: Tensor | None = None) -> Tensor:
    """`renorm`'s prediction `[B, L, T, H]` from the clean `run`, `c = b - z`, the live
    `d f / d z` per layer (`[B, T, H]` each) and the live gradients at the norms' outputs,
    each layer by `backend` (`"eager"`, or `"triton"` as resolved by
    `resolve_renorm_backend`), written into `out` where given (`c` itself is fine: each
    layer reads its own slice of `c` before it writes it). The last layer's nodes reach a
    target read at `p` only from `p` (their `g_live` and the gradient at the norm they
    reach are 0 elsewhere, and so is the prediction): only the rows at `p` are computed
    there."""
    B, L, T, H = c.shape
    out = c.new_empty(B, L, T, H) if out is None else out
    work = None                              # eager's temporaries, shared by the layers
    every = (slice(None), slice(None))
    at_p = (torch.arange(B, device=c.device), tgt.position)
    with torch.no_grad():
        for l in range(L):
            at = at_p if l == L - 1 and not tgt.every_position else every
            if backend == "triton" and not _FAILED and _fused(model, run, l, at, c, g_live,
                                                              g_norm, out):
                continue
            if at is every:                  # written in place
                if work is None and _uses_work(model, l):
                    work = c.new_empty(5, B, T, H)
                _eager(model, run, l, at, c, g_live, g_norm, out=out[:, l], work=work)
            else:                            # only the rows at p: the rest is 0
                rows = _eager(model, run, l, at, c, g_live, g_norm)
                out[:, l].zero_()[at] = rows
    return out


def _uses_work(model: BilinearTransformer, l: int) -> bool:
    """Whether layer `l`'s eager `renorm` uses the shared temporaries: pre-norm through a
    norm that is not `none` (post-norm's change, and no norm's, make their own)."""
    return (model.config.norm_position == "pre"
            and model.norm(first_norms(model)[l]).kind != "none")


def _eager(model: BilinearTransformer, run: TransformerRun, l: int, at: tuple, c: Tensor,
           g_live: Sequence[Tensor], g_norm: dict[int, Tensor], out: Tensor | None = None,
           work: Tensor | None = None) -> Tensor:
    """`renorm` of layer `l`'s nodes at the positions `at` (an index of `[B, T]`), written
    into `out` where given (pre-norm, with `work` for its temporaries; post-norm returns a
    new tensor, copied there)."""
    i = first_norms(model)[l]
    held = SimpleNamespace(resid=run.resid[at].movedim(-2, 1),      # the norm axis second,
                           scale=run.scale[at].movedim(-1, 1),      # as renorm's closed
                           mean=run.mean[at].movedim(-1, 1))        # forms read it
    c_l, g_l, g_n, D = c[:, l][at], g_live[l][at], g_norm[i][at], model.layers[l].D
    if model.config.norm_position == "pre":  # the path through that norm swapped for exact
        return _swap_norm(model, held, i, g_n, D, c_l, g_l, out=out, work=work)
    p = _norm_change(model, held, i, g_n, D, c_l, slope=g_l)   # every path runs through it
    return p if out is None else out.copy_(p)


def _fused(model: BilinearTransformer, run: TransformerRun, l: int, at: tuple, c: Tensor,
           g_live: Sequence[Tensor], g_norm: dict[int, Tensor], out: Tensor) -> bool:
    """Layer `l`'s `renorm` by the Triton kernel, written into `out[:, l]` (which may be
    `c[:, l]`: each tile of `c` is read before the same program writes it); False where it
    does not run (no norm: the exact change is the slope; a Triton error, with a warning)."""
    from bilens.attribution import triton_renorm
    from bilens.core.triton_gemm import TRITON_ERRORS

    i = first_norms(model)[l]
    norm = model.norm(i)
    if norm.kind == "none":
        return False
    r, s = run.resid[at][..., i, :], run.scale[at][..., i]
    if norm.kind == "layer":                 # the centring is linear: centred vectors
        r = r - run.mean[at][..., i, None]
    every = isinstance(at[0], slice)         # every position, else one row per sequence
    c_l, g_l = (c[:, l], g_live[l]) if every else (c[:, l][at], g_live[l][at])
    dst = out[:, l] if every else torch.empty_like(c_l)
    try:
        triton_renorm.renorm_closed_form(
            r.reshape(-1, r.shape[-1]), g_norm[i][at].reshape(-1, r.shape[-1]), norm.weight,
            model.layers[l].D, s.reshape(-1), c_l, g_l, dst,
            swap=model.config.norm_position == "pre", centre=norm.kind == "layer")
    except TRITON_ERRORS as err:
        _FAILED.append(f"{type(err).__name__}: {err}")         # not tried again this process
        warnings.warn(f"bilens: renorm's Triton kernel failed ({_FAILED[0]}); running its "
                      f"closed form eager from now on", RuntimeWarning, stacklevel=4)
        return False
    if not every:                            # only the rows at p: the rest is 0
        out[:, l].zero_()[at] = dst
    return True


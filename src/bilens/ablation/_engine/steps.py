"""The elementwise steps of exhaustive ablation, and how their matmuls run.

Each step is a plain torch function (readable, and what the CPU runs). On a GPU,
`Kernels(compile=True)` hands them to `torch.compile`, which fuses each one into a
single pass over memory, and `precision="3xtf32"` runs the large matmuls on the tensor
cores at float32 accuracy: each factor is split into a TF32 high part and a TF32 low
part, and `A @ B ~ A_hi B_hi + A_lo B_hi + A_hi B_lo` is two matmuls,
`[A_hi | A_lo] @ [B_hi; B_hi]` plus `A_hi @ B_lo` accumulated into the same output (the
dropped `A_lo B_lo` is ~2^-22 relative). The fused step that makes `A` writes `[A_hi | A_lo]`
directly.
"""

from __future__ import annotations

import contextlib

import torch
import torch.fx.experimental._config as fx_config
from jaxtyping import Float
from torch import Tensor

from bilens.ablation._engine.backend import fallback
from bilens.core.norms import inverse_scale_change, perturbed_scale
from bilens.core.split import round_tf32


def split_rows(x: Float[Tensor, "m k"]) -> Float[Tensor, "m 2k"]:
    """`[x_hi | x_lo]`, the left factor of a 3xTF32 product."""
    hi = round_tf32(x)
    return torch.cat([hi, round_tf32(x - hi)], dim=-1)


def split_cols(w: Float[Tensor, "k n"]) -> tuple[Tensor, Tensor]:
    """`([w_hi; w_hi], w_lo)`, the right factors of a 3xTF32 product."""
    hi = round_tf32(w)
    return torch.cat([hi, hi], dim=0).contiguous(), round_tf32(w - hi).contiguous()


def entry_dz(
    alpha: Float[Tensor, "b k"], beta: Float[Tensor, "b k"],
    LPk: Float[Tensor, "k h"], RPk: Float[Tensor, "k h"],
    ql: Float[Tensor, "b h"], qr: Float[Tensor, "b h"],
    a: Float[Tensor, "b h"], b: Float[Tensor, "b h"],
) -> Float[Tensor, "b k h"]:
    """`dz` of the layer right after the ablated one, from its rank-2 input perturbation
    `du = alpha P_k + beta q`: `dleft = alpha (L P)_k + beta L q` (and `dright` alike),
    `dz = a * dright + dleft * (b + dright)`."""
    al, be = alpha[..., None], beta[..., None]
    dleft = (LPk * al).addcmul_(be, ql[:, None, :])                  # in place: fewer passes
    dright = (RPk * al).addcmul_(be, qr[:, None, :])
    return (dright + b[:, None, :]).mul_(dleft).addcmul_(a[:, None, :], dright)


def layer_dz(
    lr: Float[Tensor, "b k 2h"], a: Float[Tensor, "b h"], b: Float[Tensor, "b h"],
) -> Float[Tensor, "b k h"]:
    """`dz = a * dright + dleft * (b + dright)` from `[dleft | dright] = du @ [L; R]^T`."""
    dleft, dright = lr.chunk(2, dim=-1)
    return (dright + b[:, None, :]).mul_(dleft).addcmul_(a[:, None, :], dright)


def norm_delta(
    kind: str, frozen: bool, delta: Float[Tensor, "b k d"], r: Float[Tensor, "b d"],
    s: Float[Tensor, " b"], gamma: Float[Tensor, " d"] | None,
) -> Float[Tensor, "b k d"]:
    """`N(r + delta) - N(r)` without cancellation (`r` centred for LayerNorm, whose beta
    cancels): `s'^2 = s^2 + (2 r.delta + |delta|^2) / d` on centred vectors, and
    `gamma * (delta / s' - r (s' - s) / (s s'))` with `s' - s = (s'^2 - s^2) / (s' + s)`."""
    if kind == "none":
        return delta
    if kind == "layer":
        delta = delta - delta.mean(-1, keepdim=True)
    s = s[:, None]                                                           # [b, 1]
    if frozen:
        return gamma * (delta / s[..., None])
    r_dot = (delta * r[:, None, :]).sum(-1)                                   # r . delta [b, k]
    s_new, ds2 = perturbed_scale(s, r_dot, delta.pow(2).sum(-1), delta.shape[-1])
    beta = inverse_scale_change(s, s_new, ds2)                               # -(s'-s)/(s s')
    return gamma * (delta / s_new[..., None] + beta[..., None] * r[:, None, :])


STEP_RECOMPILES = 64          # graphs of one step function before dynamo runs it eager


class Kernels:
    """How the steps run for one backend (`bilens.ablation._engine.backend`): eager or
    compiled elementwise steps; float32 or split products, on cuBLAS or as Triton GEMMs.

    Args:
        precision: `"fp32"` (plain float32 matmuls), `"3xtf32"` or `"3xfp16"` (float32-level
            accuracy from three products of halves, see `triton_ops`).
        backend: `"eager"`, `"compile"` or `"triton"`, as resolved by `resolve_backend`.
        compile_steps: compile the elementwise steps (default: for `compile` and `triton`);
            False keeps them eager under the Triton GEMMs (the CUDA tests' fixture).
    """

    def __init__(self, precision: str = "fp32", backend: str = "eager",
                 compile_steps: bool | None = None):
        self.split = precision in ("3xtf32", "3xfp16")
        self.triton = backend == "triton" and self.split      # Triton runs split products
        self.f16 = self.triton and precision == "3xfp16"
        self.entry = entry_dz
        self.layer = layer_dz
        self.norm = norm_delta
        self.compile_error: str | None = None
        if self.split and not self.triton:      # Triton splits its own factors as it loads
            self.entry, self.layer = self._entry, self._layer
        if compile_steps is None:
            compile_steps = backend != "eager"
        self.compile_steps = compile_steps
        if compile_steps:
            self.entry = self._compiled(self.entry)
            self.layer = self._compiled(self.layer)
            self.norm = self._compiled(norm_delta)
            self.norm_rows = self._compiled(self.norm_rows)

    def step(self, fn):
        """`fn` as this backend runs a step of varying shape: where the steps are compiled,
        compiled with symbolic shapes (`dynamic=True`) and no duck sizing (two sizes or
        storage offsets that happen to be equal, such as a batch of 64 rows and a head of 64,
        would otherwise be guarded equal, and every batch that breaks the coincidence would
        compile another graph), allowing `STEP_RECOMPILES` graphs (one per dtype, flag and
        size-1 axis met), else `fn` itself. (For a CPU inductor writes `expm1` as
        `exp(x) - 1`, which loses the relative accuracy of small changes: the public
        functions compile steps on CUDA only, `backend.resolve_backend`.)"""
        if not self.compile_steps:
            return fn
        fast = self._compiled(fn, dynamic=True)

        def call(*args):
            with (torch._dynamo.config.patch(recompile_limit=STEP_RECOMPILES),
                  fx_config.patch(use_duck_shape=False)):
                return fast(*args)
        return call

    def _compiled(self, fn, dynamic: bool = False):
        """`torch.compile(fn)`; if the compiler fails, warn once and run `fn` eager. Static
        shapes by default: cheaper index arithmetic, one compile per shape."""
        from torch._dynamo.exc import TorchDynamoException

        fast = torch.compile(fn, dynamic=dynamic)

        def call(*args):
            if self.compile_error is None:
                try:
                    return fast(*args)
                except TorchDynamoException as err:
                    self.compile_error = f"{type(err).__name__}: {str(err)[:200]}"
                    fallback(f"torch.compile failed on {fn.__name__} ({self.compile_error}); "
                             f"its steps run eager")
            return fn(*args)
        return call

    def _entry(self, *args: Tensor) -> Tensor:
        dz = entry_dz(*args)
        return split_rows(dz) if self.split else dz

    def _layer(self, lr: Tensor, a: Tensor, b: Tensor) -> Tensor:
        dz = layer_dz(lr, a, b)
        return split_rows(dz) if self.split else dz

    def norm_rows(self, *args) -> tuple[Tensor, Tensor]:
        """`norm_delta(*args)` and the same prepared as a left factor (one fused step)."""
        du = norm_delta(*args)
        return du, (split_rows(du) if self.split else du)

    def weight(self, w: Float[Tensor, "k n"]) -> Tensor | tuple[Tensor, Tensor]:
        """A right factor as the matmuls want it (split for 3xTF32)."""
        return split_cols(w) if self.split else w.contiguous()

    def rows(self, x: Float[Tensor, "... k"]) -> Float[Tensor, "... k"]:
        """A left factor that is not already split by a fused step."""
        return split_rows(x) if self.split else x

    def mm(self, x: Tensor, w: Tensor | tuple[Tensor, Tensor], add: Tensor | None = None
           ) -> Tensor:
        """`x @ w (+ add)`, batched over the leading axes of `x`; `x` and `w` as prepared by
        `rows`/a fused step and `weight`."""
        flat = x.reshape(-1, x.shape[-1])
        if not self.split:
            out = flat @ w if add is None else torch.addmm(add.reshape(-1, add.shape[-1]), flat, w)
            return out.view(*x.shape[:-1], w.shape[-1])
        w2, w_lo = w
        with _tf32():
            out = (flat @ w2 if add is None
                   else torch.addmm(add.reshape(-1, add.shape[-1]), flat, w2))
            out.addmm_(flat[:, :w_lo.shape[0]], w_lo)         # + x_hi @ w_lo
        return out.view(*x.shape[:-1], w_lo.shape[-1])


@contextlib.contextmanager
def _tf32():
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev

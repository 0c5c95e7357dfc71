"""What a run changes in the network: one small object instead of four keyword arguments.

Every model family's `run(inputs, intervention)` reads it the same way:

- `scale`, `mean`: frozen norm statistics (`s`, and LayerNorm's `mu`), indexed by norm on the
  last axis (`[batch, norm]`, or `[batch, seq, norm]` in a sequence model); None recomputes
  them (the real network). A clean run's `.scale` / `.mean` are what the linearizations freeze.
- `pattern`: frozen attention patterns (sequence models only), `[batch, layer, head, seq, seq]`.
- `patch`: `{layer: (mask, values)}`; `z[mask] := values[mask]` (an ablation).
- `z_offset`: added to every `z` after any patch, `[batch, layer, ...]` (a zero tensor with
  `requires_grad` makes `d f / d z` available from autograd).
- `norm_offset`: added to every norm's output (sequence models), `[batch, seq, norm, d_model]`
  (a zero tensor with `requires_grad` makes `d f / d N_i(r)` available, for `renorm`).
  Either offset may also come as one tensor per layer / norm (None for none there), e.g.
  `offset.unbind(1)`: the gradient of the whole offset is then one stack of the parts'
  gradients, where indexing the tensor would give every layer a zero-filled gradient of the
  whole offset's size to add up.
- `tap`: called as `tap(kind, index, tensor)` with every `z` (`"z"`, its layer; after any
  patch and offset) and every norm's output (`"norm"`, its index; after any offset) as the
  run uses them, read-only. A caller that keeps them can ask `torch.autograd.grad` for
  `d f / d z` and `d f / d N_i(r)` directly, with no zero offset to allocate and add (where
  a norm is `none`, its output is its input, and the gradient there also counts the skip).
- `detach_scale`, `detach_pattern`: hold the run's *own* norm statistics `s` (LayerNorm's
  centring stays live) and attention patterns: the values are unchanged, but autograd treats
  them as constants. One autograd forward with them is the clean run and the `frozen`
  linearization at once, so no clean run has to come first to supply `scale` / `pattern`.

Example:
    >>> from bilens.core.config import ModelConfig
    >>> from bilens.core.models.mlp import BilinearNet
    >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
    >>> x = torch.randn(5, 8)
    >>> clean = model.run(x)
    >>> frozen = model.run(x, Intervention(scale=clean.scale))  # norms hold the clean s
    >>> torch.allclose(frozen.logits, clean.logits)             # nothing else changed: same run
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from bilens.core.errors import BilensError

# layer -> (mask, values broadcastable to z's shape): z[mask] := values[mask]
Patch = Mapping[int, tuple[Bool[Tensor, "..."], Float[Tensor, "..."]]]


@dataclass(frozen=True)
class Intervention:
    """Frozen statistics, frozen patterns, patched and offset `z` (all optional)."""

    scale: Float[Tensor, "batch *seq norm"] | None = None
    mean: Float[Tensor, "batch *seq norm"] | None = None
    pattern: Float[Tensor, "batch layer head seq seq"] | None = None
    patch: Patch | None = None
    z_offset: Float[Tensor, "batch layer *seq d_hidden"] | Sequence[Tensor | None] | None = None
    norm_offset: Float[Tensor, "batch seq norm d_model"] | Sequence[Tensor | None] | None = None
    detach_scale: bool = False
    detach_pattern: bool = False
    tap: Callable[[str, int, Tensor], None] | None = None

    def stats(self, i: int) -> tuple[Tensor | None, Tensor | None]:
        """Norm `i`'s frozen `(s, mu)`, each None where it is recomputed."""
        return (None if self.scale is None else self.scale[..., i],
                None if self.mean is None else self.mean[..., i])

    def edit_z(self, l: int, z: Tensor) -> Tensor:  # noqa: E741 (SPEC's layer index)
        """Layer `l`'s `z` after the patch and the offset."""
        if self.patch is not None and l in self.patch:
            mask, values = self.patch[l]
            z = torch.where(mask, values, z)
        offset = None if self.z_offset is None else part(self.z_offset, l, 1)
        return self.observe("z", l, z if offset is None else z + offset)

    def observe(self, kind: str, index: int, t: Tensor) -> Tensor:
        """`t` itself, shown to the tap first (where there is one)."""
        if self.tap is not None:
            self.tap(kind, index, t)
        return t

    def norm_offset_at(self, i: int) -> Tensor | None:
        """What is added to norm `i`'s output `[batch, seq, d_model]`, or None."""
        return None if self.norm_offset is None else part(self.norm_offset, i, 2)

    def check(self, leading: tuple[int, ...], n_norms: int) -> None:
        """Raise unless the frozen statistics are `[*leading, n_norms]`."""
        expected = (*leading, n_norms)
        for name in ("scale", "mean"):
            stats = getattr(self, name)
            if stats is not None and tuple(stats.shape) != expected:
                raise BilensError(f"intervention.{name}: expected shape {list(expected)} "
                                  f"([batch, ..., n_norms]), got {list(stats.shape)}; pass a "
                                  f"clean run's `.{name}`")


def part(offset: Tensor | Sequence[Tensor | None], i: int, axis: int) -> Tensor | None:
    """Entry `i` of an offset along `axis`, whether it is one tensor or one per entry."""
    return offset[i] if isinstance(offset, (tuple, list)) else offset.select(axis, i)


NONE = Intervention()

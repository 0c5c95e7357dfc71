"""The three norms of docs/spec.md §1, with their statistics exposed by name, and the one closed
form of how a statistic moves when the residual does.

    none:  N(r) = r
    rms:   N(r) = gamma * r / s,               s = sqrt(mean(r^2) + eps)
    layer: N(r) = gamma * (r - mu) / s + beta,  mu = mean(r), s = sqrt(mean((r - mu)^2) + eps)

Statistics are per vector, over the feature (last) axis; any leading axes (batch, or batch
and position in a sequence model) are kept. Passing `scale` freezes `s` at a value computed
elsewhere (a clean run): the norm is then linear in `r`. LayerNorm keeps its centering live,
because centering is linear already (docs/spec.md §4 "frozen"); pass `mean` as well to freeze `mu`.
`detach_scale=True` holds the `s` computed from `r` itself: the same value, a constant to
autograd, so one forward is both the clean run and the frozen linearization.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from bilens.core.types import NORM_KINDS


class Norm(nn.Module):
    """One normalization over `d_model` features: `none`, `rms` or `layer`.

    Example:
        >>> y, s, mu = Norm("rms", 4, eps=0.0)(torch.tensor([[3.0, 3.0, 3.0, 3.0]]))
        >>> y.tolist(), s.tolist()
        ([[1.0, 1.0, 1.0, 1.0]], [3.0])
    """

    def __init__(self, kind: str, d_model: int, eps: float, learnable_gain: bool = True):
        super().__init__()
        if kind not in NORM_KINDS:
            raise ValueError(f"norm kind: expected one of {NORM_KINDS}, got {kind!r}")
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
        r: Float[Tensor, "*vec d_model"],
        scale: Float[Tensor, "*vec"] | None = None,
        mean: Float[Tensor, "*vec"] | None = None,
        *,
        detach_scale: bool = False,
    ) -> tuple[Float[Tensor, "*vec d_model"], Float[Tensor, "*vec"], Float[Tensor, "*vec"]]:
        """Normalize `r`; return `(N(r), s, mu)` (`s` is 1 for `none`; `mu` is 0 unless
        LayerNorm). `scale`/`mean`, when given, replace the statistics computed from `r`;
        `detach_scale` detaches `s` (computed or given) before it divides: autograd then
        treats it as a constant, as `frozen` does."""
        if self.kind == "none":
            ones = r.new_ones(r.shape[:-1])
            return r, ones, torch.zeros_like(ones)
        if self.kind == "rms":
            mu = r.new_zeros(r.shape[:-1])
            centered = r
        else:
            mu = r.mean(dim=-1) if mean is None else mean                     # [*vec]
            centered = r - mu[..., None]                                      # [*vec, d]
        s = (centered.pow(2).mean(dim=-1) + self.eps).sqrt() if scale is None else scale
        if detach_scale:
            s = s.detach()                                                    # held: a constant
        y = self.weight * centered / s[..., None]                             # [*vec, d]
        if self.kind == "layer":
            y = y + self.bias
        return y, s, mu

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, eps={self.eps}"


def perturbed_scale(
    s: Float[Tensor, "*any"],
    r_dot_delta: Float[Tensor, "*any"],
    delta_sq: Float[Tensor, "*any"],
    d_model: int,
) -> tuple[Float[Tensor, "*any"], Float[Tensor, "*any"]]:
    """The statistic after the norm's input moves from `r` to `r + delta`, in closed form.

        s'^2 = s^2 + (2 r.delta + |delta|^2) / d

    with `r` and `delta` centred for LayerNorm (its `mu` moves by `mean(delta)`, which the
    centring absorbs), `eps` inside `s^2` already. For an ablation `delta = c D_k`, so
    `r.delta = c r.D_k` and `|delta|^2 = c^2 |D_k|^2`. This is the one copy of the formula:
    `renorm`, the drift measurement, the fused ablation steps and the plan all call it.

    Args:
        s: the clean statistic.
        r_dot_delta: `r . delta` (centred vectors for LayerNorm).
        delta_sq: `|delta|^2` (centred for LayerNorm).
        d_model: the feature width `d`.

    Returns:
        `(s', ds2)` with `ds2 = s'^2 - s^2`, kept so callers can form `1/s' - 1/s =
        -ds2 / (s s' (s + s'))` without cancellation.

    Example:
        >>> s2, ds2 = perturbed_scale(torch.tensor(2.0), torch.tensor(1.0), torch.tensor(2.0), 4)
        >>> round(s2.item() ** 2, 6), ds2.item()
        (5.0, 1.0)
    """
    # in place where it can be: on `[B, H]` every temporary is one more pass over fresh memory
    ds2 = torch.add(delta_sq, r_dot_delta, alpha=2).div_(d_model)     # (2 r.delta + |delta|^2)/d
    return torch.add(ds2, s * s).clamp_min_(torch.finfo(s.dtype).tiny).sqrt_(), ds2


def inverse_scale_change(
    s: Float[Tensor, "*any"], s_new: Float[Tensor, "*any"], ds2: Float[Tensor, "*any"],
) -> Float[Tensor, "*any"]:
    """`1/s' - 1/s`, written `-(s'^2 - s^2) / (s s' (s + s'))` so that it stays accurate
    relative to its own size when `s'` is close to `s`."""
    return ds2.div((s * s_new).mul_(s + s_new)).neg_()               # two temporaries, not five

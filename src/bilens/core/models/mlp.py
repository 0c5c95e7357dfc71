"""The bilinear residual network of SPEC §1.

    h0 = E x
    post-norm: u = h;        z = (L u) * (R u);  r = h + D z;  h <- N_l(r)      logits = W h
    pre-norm:  u = N_l(h);   z = (L u) * (R u);  h <- h + D z                   logits = W N_f(h)

A channel is `(l, k)`: entry `k` of layer `l`'s hidden vector `z`. `BilinearNet.run` returns
every intermediate the attribution and ablation code needs, and can run with norm
statistics handed in (frozen) and with chosen channels of `z` replaced (ablated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from bilens.core.config import ModelConfig
from bilens.core.errors import BilensError, check_inputs
from bilens.core.norms import Norm

# layer -> (mask [B, H] or [H], values broadcastable to [B, H]): z[mask] := values[mask]
Patch = Mapping[int, tuple[Bool[Tensor, "..."], Float[Tensor, "..."]]]


class BilinearLayer(nn.Module):
    """`z = (L u) * (R u)`, written back to the residual as `D z`, and this layer's norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.L = nn.Parameter(torch.randn(cfg.d_hidden, cfg.d_model) / math.sqrt(cfg.d_model))
        self.R = nn.Parameter(torch.randn(cfg.d_hidden, cfg.d_model) / math.sqrt(cfg.d_model))
        self.D = nn.Parameter(
            torch.randn(cfg.d_model, cfg.d_hidden) / math.sqrt(cfg.d_hidden) * 0.1)
        self.norm = Norm(cfg.norm, cfg.d_model, cfg.eps, cfg.learnable_gain)


@dataclass
class Run:
    """Everything one forward pass computed (norm index `i`: layer `i`'s norm; in pre-norm
    index `n_layers` is the final norm)."""

    logits: Float[Tensor, "batch n_out"]
    u: Float[Tensor, "batch layer d_model"]          # input of each bilinear layer
    left: Float[Tensor, "batch layer d_hidden"]      # L u
    right: Float[Tensor, "batch layer d_hidden"]     # R u
    z: Float[Tensor, "batch layer d_hidden"]         # (L u) * (R u), after any patch
    resid: Float[Tensor, "batch norm d_model"]       # what each norm normalizes
    scale: Float[Tensor, "batch norm"]               # s of each norm (1 for "none")
    mean: Float[Tensor, "batch norm"]                # mu of each norm (0 unless LayerNorm)
    final: Float[Tensor, "batch d_model"]            # the vector the head reads

    def cache(self) -> dict[str, Tensor]:
        """Named intermediates, TransformerLens-style: `layers.2.z`, `layers.2.norm.scale`, ..."""
        out: dict[str, Tensor] = {}
        n_layers = self.z.shape[1]
        for l in range(n_layers):
            for name in ("u", "left", "right", "z"):
                out[f"layers.{l}.{name}"] = getattr(self, name)[:, l]
        for i in range(self.scale.shape[1]):
            prefix = f"layers.{i}" if i < n_layers else "final_norm"
            out[f"{prefix}.resid"] = self.resid[:, i]
            out[f"{prefix}.norm.scale" if i < n_layers else f"{prefix}.scale"] = self.scale[:, i]
            out[f"{prefix}.norm.mean" if i < n_layers else f"{prefix}.mean"] = self.mean[:, i]
        out["final"] = self.final
        out["logits"] = self.logits
        return out


class BilinearNet(nn.Module):
    """A residual stack of bilinear layers between a linear embedding and a linear head.

    Example:
        >>> cfg = ModelConfig(d_in=64, d_model=32, d_hidden=64, n_layers=2, n_out=10)
        >>> model = BilinearNet(cfg)
        >>> model(torch.randn(5, 64)).shape
        torch.Size([5, 10])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.d_in, config.d_model, bias=False)   # E [d_model, d_in]
        self.layers = nn.ModuleList(BilinearLayer(config) for _ in range(config.n_layers))
        if config.norm_position == "pre":
            self.final_norm = Norm(config.norm, config.d_model, config.eps, config.learnable_gain)
        self.head = nn.Linear(config.d_model, config.n_out, bias=False)    # W [n_out, d_model]

    def norm(self, i: int) -> Norm:
        """Norm `i`: layer `i`'s, or the final norm when `i == n_layers` (pre-norm)."""
        return self.layers[i].norm if i < self.config.n_layers else self.final_norm

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch n_out"]:
        """The logits only: one forward pass that keeps no intermediates (`run` keeps them)."""
        check_inputs(x, self.config.d_in)
        post = self.config.norm_position == "post"
        h = self.embed(x)
        for layer in self.layers:
            u = h if post else layer.norm(h)[0]
            h = torch.addmm(h, (u @ layer.L.T) * (u @ layer.R.T), layer.D.T)
            if post:
                h = layer.norm(h)[0]
        return self.head(h if post else self.final_norm(h)[0])

    def run(
        self,
        x: Float[Tensor, "batch d_in"],
        *,
        scale: Float[Tensor, "batch norm"] | None = None,
        mean: Float[Tensor, "batch norm"] | None = None,
        patch: Patch | None = None,
        z_offset: Float[Tensor, "batch layer d_hidden"] | None = None,
        check: bool = True,
    ) -> Run:
        """One forward pass returning every intermediate.

        Args:
            x: inputs `[B, d_in]`.
            scale: frozen `s` for every norm `[B, n_norms]` (e.g. a clean run's `.scale`);
                None recomputes them (the real network).
            mean: frozen `mu` as well (LayerNorm); None keeps centering live, as the
                frozen linearization of SPEC §4 does.
            patch: `{layer: (mask, values)}` replaces `z[mask]` by `values[mask]`.
            z_offset: added to `z` after any patch (a zero tensor with `requires_grad`
                makes `d f / d z` available from autograd).
            check: validate `x` (shape, NaN) first.
        """
        cfg = self.config
        if check:
            check_inputs(x, cfg.d_in)
            self._check_stats(x, scale, "scale")
            self._check_stats(x, mean, "mean")
        post = cfg.norm_position == "post"
        us, resids, scales, means = [], [], [], []
        # [B, L, H] results written in place, layer by layer (no stacking copies); `out=`
        # has no autograd, so with gradients on the per-layer tensors are stacked instead
        shape = (x.shape[0], cfg.n_layers, cfg.d_hidden)
        keep = None if torch.is_grad_enabled() else [x.new_empty(shape) for _ in range(3)]
        lefts, rights, zs = [], [], []

        def normalize(i: int, r: Tensor) -> Tensor:
            y, s, mu = self.norm(i)(r, None if scale is None else scale[:, i],
                                    None if mean is None else mean[:, i])
            resids.append(r)
            scales.append(s)
            means.append(mu)
            return y

        h = self.embed(x)                                          # h0 = E x      [B, d]
        for l, layer in enumerate(self.layers):
            u = h if post else normalize(l, h)                     # [B, d]
            if keep is None:
                left, right = u @ layer.L.T, u @ layer.R.T         # L u, R u      [B, H]
                z = left * right                                   # [B, H]
            else:
                slots = [t[:, l] for t in keep]
                left = torch.mm(u, layer.L.T, out=slots[0])
                right = torch.mm(u, layer.R.T, out=slots[1])
                z = torch.mul(left, right, out=slots[2])
            if patch is not None and l in patch:
                mask, values = patch[l]
                z = torch.where(mask, values, z)
            if z_offset is not None:
                z = z + z_offset[:, l]
            if keep is None:
                lefts.append(left)
                rights.append(right)
                zs.append(z)
            elif z.data_ptr() != slots[2].data_ptr():
                z = slots[2].copy_(z)                              # a patched or offset z
            h = torch.addmm(h, z, layer.D.T)                       # r = h + D z   [B, d]
            if post:
                h = normalize(l, h)                                # h <- N_l(r)
            us.append(u)
        final = h if post else normalize(cfg.n_layers, h)          # [B, d]
        left, right, z = keep if keep is not None else (
            torch.stack(lefts, 1), torch.stack(rights, 1), torch.stack(zs, 1))
        return Run(
            logits=self.head(final),                               # W h           [B, n_out]
            u=torch.stack(us, 1), left=left, right=right, z=z, resid=torch.stack(resids, 1),
            scale=torch.stack(scales, 1), mean=torch.stack(means, 1), final=final,
        )

    def _check_stats(self, x: Tensor, stats: Tensor | None, name: str) -> None:
        expected = (x.shape[0], self.config.n_norms)
        if stats is not None and tuple(stats.shape) != expected:
            raise BilensError(f"{name}: expected shape [batch, n_norms] = {list(expected)}, got "
                              f"{list(stats.shape)}; pass a clean run's `.{name}`")

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

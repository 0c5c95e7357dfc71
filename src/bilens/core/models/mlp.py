"""The bilinear residual network of docs/spec.md §1, written as the SPEC writes it.

    h0 = E x
    post-norm: u = h;        z = (L u) * (R u);  r = h + D z;  h <- N_l(r)      logits = W h
    pre-norm:  u = N_l(h);   z = (L u) * (R u);  h <- h + D z                   logits = W N_f(h)

A channel is `(l, k)`: entry `k` of layer `l`'s hidden vector `z`. `BilinearNet.run` returns
every intermediate the attribution and ablation code needs, and takes an `Intervention`
(frozen statistics, patched or offset `z`). The fast engines' allocation-free clean run is
`bilens.core.models.fastrun`, held equal to `run` by the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from bilens.core.config import ModelConfig
from bilens.core.errors import check_inputs
from bilens.core.models.base import ResidualModel
from bilens.core.models.intervention import NONE, Intervention
from bilens.core.norms import Norm


class BilinearLayer(nn.Module):
    """`z = (L u) * (R u)`, written back to the residual as `D z`, and this layer's norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.L = nn.Parameter(torch.randn(cfg.d_hidden, cfg.d_model) / math.sqrt(cfg.d_model))
        self.R = nn.Parameter(torch.randn(cfg.d_hidden, cfg.d_model) / math.sqrt(cfg.d_model))
        self.D = nn.Parameter(
            torch.randn(cfg.d_model, cfg.d_hidden) / math.sqrt(cfg.d_hidden) * 0.1)
        self.norm = Norm(cfg.norm, cfg.d_model, cfg.eps, cfg.learnable_gain)

    def forward(self, u: Float[Tensor, "*vec d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """`(L u, R u, z)`, each `[*vec, d_hidden]`."""
        left, right = u @ self.L.T, u @ self.R.T
        return left, right, left * right


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


class BilinearNet(ResidualModel):
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
        intervention: Intervention = NONE,
        *,
        check: bool = True,
    ) -> Run:
        """One forward pass returning every intermediate.

        Args:
            x: inputs `[B, d_in]`.
            intervention: frozen statistics (`scale`, `mean` `[B, n_norms]`), patched `z`
                (`patch`), an offset on `z` (`z_offset` `[B, n_layers, d_hidden]`); the
                default changes nothing (the real network).
            check: validate `x` (shape, NaN) and the intervention first.
        """
        cfg, iv = self.config, intervention
        if check:
            check_inputs(x, cfg.d_in)
            iv.check((x.shape[0],), cfg.n_norms)
        post = cfg.norm_position == "post"
        norms: list[tuple[Tensor, Tensor, Tensor]] = []            # (r, s, mu) per norm
        layers: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []   # (u, L u, R u, z) per layer
        h = self.embed(x)                                          # h0 = E x      [B, d]
        for l, layer in enumerate(self.layers):
            u = h if post else self._normalize(l, h, iv, norms)    # u = h | N_l(h)
            left, right, z = layer(u)                              # z = (L u) * (R u)  [B, H]
            z = iv.edit_z(l, z)                                    # ablation, offset
            h = h + z @ layer.D.T                                  # r = h + D z   [B, d]
            if post:
                h = self._normalize(l, h, iv, norms)               # h <- N_l(r)
            layers.append((u, left, right, z))
        final = h if post else self._normalize(cfg.n_layers, h, iv, norms)
        u, left, right, z = (torch.stack(t, 1) for t in zip(*layers, strict=True))
        resid, scale, mean = (torch.stack(t, 1) for t in zip(*norms, strict=True))
        return Run(logits=self.head(final), u=u, left=left, right=right, z=z,  # W h
                   resid=resid, scale=scale, mean=mean, final=final)

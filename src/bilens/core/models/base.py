"""What every model family shares: its norm step under an `Intervention`, and the
parameter count, device and dtype a caller asks a model for."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bilens.core.models.intervention import Intervention
from bilens.core.norms import Norm


class ResidualModel(nn.Module):
    """Base of `BilinearNet` and `BilinearTransformer`; a subclass has `embed` and `norm(i)`."""

    embed: nn.Module

    def norm(self, i: int) -> Norm:          # pragma: no cover  (each family numbers its norms)
        raise NotImplementedError

    def _normalize(self, i: int, r: Tensor, iv: Intervention,
                   norms: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """`N_i(r)` under the intervention's statistics; `(r, s, mu)` appended to `norms`."""
        y, s, mu = self.norm(i)(r, *iv.stats(i), detach_scale=iv.detach_scale)
        norms.append((r, s, mu))
        return iv.observe("norm", i, y)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

"""Which channels an ablation covers: `layers=` and `channels=` as one bool mask."""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from bilens.core.errors import BilensError
from bilens.core.types import ChannelSpec


def channel_mask(
    n_layers: int, d_hidden: int, layers: Sequence[int] | None = None, channels: ChannelSpec = None,
) -> Bool[Tensor, "layer d_hidden"]:
    """Which channels to ablate, as a bool mask `[n_layers, d_hidden]`.

    Args:
        n_layers, d_hidden: the model's sizes.
        layers: layer indices (negative counts from the end); None means all.
        channels: None (all), channel indices applied to every selected layer,
            `{layer: indices}`, or a bool mask `[n_layers, d_hidden]`.

    Returns:
        The mask (CPU).
    """
    mask = torch.zeros(n_layers, d_hidden, dtype=torch.bool)
    if layers is None:
        chosen = list(range(n_layers))
    else:
        chosen = []
        for l in layers:
            if not -n_layers <= int(l) < n_layers:
                raise BilensError(f"layers: {l} is out of range; the model has {n_layers} "
                                  f"layers (0..{n_layers - 1})")
            chosen.append(int(l) % n_layers)
    if isinstance(channels, Tensor) and channels.dtype == torch.bool:
        if tuple(channels.shape) != (n_layers, d_hidden):
            raise BilensError(f"channels: a bool mask must be [n_layers, d_hidden] = "
                              f"[{n_layers}, {d_hidden}], got {list(channels.shape)}")
        mask[chosen] = channels.cpu()[chosen]
        return mask
    per_layer: dict[int, Sequence[int] | None]
    if isinstance(channels, Mapping):
        for l in channels:
            if not -n_layers <= int(l) < n_layers:
                raise BilensError(f"channels: layer {l} is out of range; the model has "
                                  f"{n_layers} layers (0..{n_layers - 1})")
        per_layer = {int(l) % n_layers: v for l, v in channels.items()}
        chosen = [l for l in chosen if l in per_layer]
    else:
        per_layer = {l: channels for l in chosen}
    for l in chosen:
        idx = per_layer[l]
        if idx is None:
            mask[l] = True
            continue
        idx = torch.as_tensor(idx, dtype=torch.long).flatten()
        if idx.numel() and (idx.min() < -d_hidden or idx.max() >= d_hidden):
            raise BilensError(f"channels: indices must lie in 0..{d_hidden - 1}, got "
                              f"{idx.min().item()}..{idx.max().item()}")
        mask[l, idx % d_hidden] = True
    return mask

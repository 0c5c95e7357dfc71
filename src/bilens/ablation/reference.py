"""The plain references of docs/spec.md §3: one rerun of the network per ablation.

    actual(x, l, k) = f(x | z_{l,k} := b) - f(x)

in the real network (every norm recomputes its statistics), or with `frozen_norm=True` in
the network whose norms hold the clean run's `s` (LayerNorm centering stays live: the
network the frozen attribution linearizes). `ablation_effects_loop` ablates one channel at
a time (batched over inputs); `joint_ablation_effect` ablates a set of channels per input
together (circuits). The fast engine (`bilens.ablation.ablation_effects`) must equal these.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from bilens.ablation.select import channel_mask
from bilens.core.baselines import resolve_baseline
from bilens.core.errors import BilensError, check_inputs
from bilens.core.models.fastrun import clean_run
from bilens.core.models.intervention import Intervention
from bilens.core.models.mlp import BilinearNet, Run
from bilens.core.targets import Target, resolve_target
from bilens.core.types import BaselineSpec, ChannelSpec, TargetSpec


def prepare(model: BilinearNet, inputs: Tensor, target: TargetSpec, baselines: BaselineSpec,
            labels: Tensor | None, reference: Tensor | None
            ) -> tuple[Tensor, Run, Target, Tensor]:
    """The inputs on the model's device, the clean run, the fixed target, `b [B, L, H]`."""
    check_inputs(inputs, model.config.d_in)
    x = inputs.to(device=model.device, dtype=model.dtype)
    clean = clean_run(model, x)
    if labels is not None:
        labels = torch.as_tensor(labels).to(model.device)
    tgt = resolve_target(target, clean.logits, labels)
    b = resolve_baseline(baselines, model, clean.z, reference)
    return x, clean, tgt, b


@torch.no_grad()
def ablation_effects_loop(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    *,
    target: TargetSpec = "predicted",
    baselines: BaselineSpec = "zero",
    labels: Int[Tensor, " batch"] | None = None,
    reference: Float[Tensor, "ref d_in"] | None = None,
    layers: Sequence[int] | None = None,
    channels: ChannelSpec = None,
    frozen_norm: bool = False,
    progress: bool = False,
) -> Float[Tensor, "batch layer d_hidden"]:
    """The plain reference: one forward pass per channel (batched over inputs).

    Args:
        model: the network.
        inputs: `[B, d_in]`.
        target: any spec of `bilens.core.targets.resolve_target`, resolved once on the
            clean run.
        baselines: `"zero"`, `"mean"` (needs `reference`), or a tensor of `z` values
            (`[L, H]` or `[B, L, H]`).
        labels: true classes `[B]` (for `"label"` and `"logprob"` targets).
        reference: inputs whose mean activation is the `"mean"` baseline.
        layers, channels: which channels to ablate (see `channel_mask`).
        frozen_norm: hold every norm's `s` at the clean run's value.
        progress: show a progress bar.

    Returns:
        `[B, n_layers, d_hidden]` effects `f(ablated) - f(clean)`; NaN where not ablated.
    """
    cfg = model.config
    x, clean, tgt, b = prepare(model, inputs, target, baselines, labels, reference)
    mask = channel_mask(cfg.n_layers, cfg.d_hidden, layers, channels)
    f0 = tgt(clean.logits)                                                    # [B]
    out = torch.full_like(clean.z, float("nan"))
    scale = clean.scale if frozen_norm else None
    pairs = mask.nonzero().tolist()
    if progress:
        from tqdm import tqdm
        pairs = tqdm(pairs, desc="ablation (loop)", unit="channel")
    for l, k in pairs:
        one = torch.zeros(cfg.d_hidden, dtype=torch.bool, device=x.device)
        one[k] = True
        run = model.run(x, Intervention(scale=scale, patch={l: (one, b[:, l])}), check=False)
        out[:, l, k] = tgt(run.logits) - f0
    return out


@torch.no_grad()
def joint_ablation_effect(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    mask: Bool[Tensor, "batch layer d_hidden"],
    *,
    target: TargetSpec = "predicted",
    baselines: BaselineSpec = "zero",
    labels: Int[Tensor, " batch"] | None = None,
    reference: Float[Tensor, "ref d_in"] | None = None,
    frozen_norm: bool = False,
) -> Float[Tensor, " batch"]:
    """Ablate a set of channels per input together: `f(x | z[mask] := b) - f(x)`.

    Args:
        model: the network.
        inputs: `[B, d_in]`.
        mask: `[B, n_layers, d_hidden]` (or `[n_layers, d_hidden]`), True where ablated.
        target, baselines, labels, reference, frozen_norm: as in `ablation_effects`.

    Returns:
        `[B]` joint effects.

    Example:
        >>> from bilens import BilinearNet, ModelConfig
        >>> model = BilinearNet(ModelConfig(d_in=4, d_model=8, d_hidden=6, n_layers=2, n_out=3))
        >>> mask = torch.zeros(2, 6, dtype=torch.bool)
        >>> joint_ablation_effect(model, torch.randn(5, 4), mask, target="class:0").abs().max()
        tensor(0.)
    """
    x, clean, tgt, b = prepare(model, inputs, target, baselines, labels, reference)
    mask = torch.as_tensor(mask, device=x.device)
    if mask.shape == clean.z.shape[1:]:
        mask = mask.expand_as(clean.z)
    if mask.shape != clean.z.shape or mask.dtype != torch.bool:
        raise BilensError(f"mask: expected a bool tensor [batch, n_layers, d_hidden] = "
                          f"{list(clean.z.shape)}, got {mask.dtype} {list(mask.shape)}")
    patch = {l: (mask[:, l], b[:, l]) for l in range(model.config.n_layers) if mask[:, l].any()}
    frozen = Intervention(scale=clean.scale if frozen_norm else None, patch=patch)
    run = model.run(x, frozen, check=False)
    return tgt(run.logits) - tgt(clean.logits)

"""Plain references for the sequence oracle: one rerun of the whole network per ablation.

`sequence_ablation_effects_loop` ablates each node `(l, t, k)` by rerunning
`BilinearTransformer.run` with a patch (and the clean statistics or patterns passed as an
`Intervention` when they are held) and subtracting the clean target: slow, and only as
accurate as a difference of two logits, but written straight from docs/spec.md §9. The tests hold
`sequence_ablation_effects` equal to it; `joint_sequence_ablation_effect` ablates a set of
nodes together (the circuit faithfulness of `verify`).
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from bilens.core.models.intervention import Intervention
from bilens.core.models.transformer import BilinearTransformer, TransformerRun
from bilens.core.sequence import SequenceTarget, node_mask

__all__ = ["sequence_ablation_effects_loop", "joint_sequence_ablation_effect"]


def _held(run: TransformerRun, frozen_norm: bool, frozen_attn: bool) -> dict:
    return {**({"scale": run.scale} if frozen_norm else {}),
            **({"pattern": run.pattern} if frozen_attn else {})}


@torch.no_grad()
def joint_sequence_ablation_effect(
    model: BilinearTransformer, tokens: Tensor, run: TransformerRun, target: SequenceTarget,
    b: Float[Tensor, "batch layer seq d_hidden"], mask: Bool[Tensor, "batch layer seq d_hidden"],
    *, frozen_norm: bool = False, frozen_attn: bool = False,
) -> Float[Tensor, " batch"]:
    """`f(x | z[mask] := b[mask]) - f(x)` per sequence: every masked node ablated at once."""
    patch = {l: (mask[:, l], b[:, l]) for l in range(model.config.n_layers) if mask[:, l].any()}
    iv = Intervention(patch=patch, **_held(run, frozen_norm, frozen_attn))
    return target(model.run(tokens, iv, check=False).logits) - target(run.logits)


@torch.no_grad()
def sequence_ablation_effects_loop(
    model: BilinearTransformer, tokens: Tensor, run: TransformerRun, target: SequenceTarget,
    b: Float[Tensor, "batch layer seq d_hidden"], *, frozen_norm: bool = False,
    frozen_attn: bool = False,
) -> Float[Tensor, "batch layer seq d_hidden"]:
    """Every node ablated one at a time by a rerun (all sequences of the batch together);
    nodes after `p` are 0 without a rerun."""
    B, L, T, H = run.z.shape
    out = torch.zeros_like(run.z)
    last = T - 1 if target.every_position else int(target.position.max())
    for l in range(L):
        for t in range(last + 1):
            for k in range(H):
                mask = torch.zeros_like(run.z, dtype=torch.bool)
                mask[:, l, t, k] = True
                out[:, l, t, k] = joint_sequence_ablation_effect(
                    model, tokens, run, target, b, mask, frozen_norm=frozen_norm,
                    frozen_attn=frozen_attn)
    return torch.where(node_mask(target.position, T), out, torch.zeros_like(out))

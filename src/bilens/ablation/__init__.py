"""Layer 1: the ground truth. Every channel really ablated, exactly and fast.

- `ablation_effects`: every selected channel of every input (the fast engine);
- `ablation_effects_loop`, `joint_ablation_effect`: the plain references (one rerun per
  ablation), and circuits (a set of channels ablated together);
- `channel_mask`: which channels `layers=` / `channels=` select;
- `ablation_split`: how `ablation_effects` splits its chunks over the ranks of a
  `torchrun` launch (docs/distributed.md).
- `sequence_ablation_effects`: every node of the bilinear transformer really ablated (the
  oracle), and its per-node rerun references in `reference_sequence`;
  `feature_ablation_effects`: every feature (channel `(l, k)` at every position at once).

The fast engine (the perturbation plan, the fused steps, the Triton kernels and the choice
of backend) is private, in `_engine`; `resolve_backend` says which backend a call will run.
"""

from bilens.ablation._engine.backend import BACKENDS, PRECISIONS, resolve_backend
from bilens.ablation.ablate import ablation_effects, ablation_split
from bilens.ablation.reference import ablation_effects_loop, joint_ablation_effect
from bilens.ablation.reference_sequence import (
    joint_sequence_ablation_effect,
    sequence_ablation_effects_loop,
)
from bilens.ablation.select import channel_mask
from bilens.ablation.sequence import feature_ablation_effects, sequence_ablation_effects

__all__ = ["ablation_effects", "ablation_split", "ablation_effects_loop", "joint_ablation_effect",
           "channel_mask", "resolve_backend", "BACKENDS", "PRECISIONS",
           "sequence_ablation_effects", "sequence_ablation_effects_loop",
           "joint_sequence_ablation_effect", "feature_ablation_effects"]

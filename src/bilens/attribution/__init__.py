"""Layer 1: the prediction. Every channel's effect from one forward and one backward pass
under a linearization (`frozen`, `live`, `renorm`).

- `attribute`: one mode, the predicted effects `[batch, layer, d_hidden]`;
- `attribute_modes`: several modes from one clean run, as an `Attribution`;
- `gradients`, `gradients_autograd`: `d f / d z` under a linearization (the written-out
  backward, and autograd for checking); `renorm_effects`: the `renorm` closed form;
- `run_with_cache`: every intermediate under a TransformerLens-style name;
- `attribute_sequence`, `attribute_sequence_modes`: every node `(l, t, k)` of the bilinear
  transformer (`frozen`, `frozen-norm`, `live`, `renorm`; docs/lm-verification.md);
- `CapturedAttribution`: `attribute_sequence` for one batch shape as a CUDA graph, replayed.
"""

from bilens.attribution.backward import GRADIENT_MODES, MODES, gradients, gradients_autograd
from bilens.attribution.captured import CapturedAttribution
from bilens.attribution.predict import (
    DEFAULT_MODE,
    Attribution,
    attribute,
    attribute_modes,
    run_with_cache,
)
from bilens.attribution.renorm import renorm_effects
from bilens.attribution.sequence import (
    SEQUENCE_MODES,
    SequenceAttribution,
    attribute_sequence,
    attribute_sequence_modes,
)

__all__ = ["attribute", "attribute_modes", "Attribution", "run_with_cache", "gradients",
           "gradients_autograd", "renorm_effects", "MODES", "GRADIENT_MODES", "DEFAULT_MODE",
           "attribute_sequence", "attribute_sequence_modes", "SequenceAttribution",
           "SEQUENCE_MODES", "CapturedAttribution"]

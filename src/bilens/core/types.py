"""The names bilens uses for its axes and for the specs its public functions accept.

Axis names, the same in every module's jaxtyping annotations:

| name       | axis                                                     |
| ---------- | -------------------------------------------------------- |
| `batch`    | inputs (or sequences) of one call                        |
| `d_in`     | input features of the MLP network (docs/spec.md §1)      |
| `d_model`  | the residual stream                                      |
| `d_hidden` | channels of one bilinear layer                           |
| `layer`    | bilinear layers                                          |
| `norm`     | norms, in order (layer `i`'s; pre-norm's final norm last) |
| `n_out`    | logits (classes, or the vocabulary of a sequence model)  |
| `seq`      | positions of a sequence                                  |
| `head`     | attention heads                                          |
| `ref`      | reference inputs (the `"mean"` baseline)                 |
| `k`        | ablations handled together in one chunk                  |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, Union

from torch import Tensor

if TYPE_CHECKING:
    from bilens.core.targets import Target

NORM_KINDS = ("none", "rms", "layer")
POSITIONS = ("post", "pre")
NormKind = Literal["none", "rms", "layer"]
Position = Literal["post", "pre"]

# what `target=` accepts (docs/spec.md §2): "predicted", "label", "logprob", "class:C",
# "diff:C1,C2", a class index, one class per input, a direction [n_out] or [batch, n_out],
# or a resolved Target
TargetSpec = Union[str, int, Sequence[int], Tensor, "Target"]
# what `baselines=` accepts (docs/spec.md §3): "zero", "mean" (with reference=...), or z values
BaselineSpec = str | Tensor | None
# which channels to ablate: all (None), indices for every layer, {layer: indices}, a bool mask
ChannelSpec = Sequence[int] | Mapping[int, Sequence[int]] | Tensor | None

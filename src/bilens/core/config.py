"""The model's configuration (docs/spec.md §1 and the `config.json` of docs/spec.md §6)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from bilens.core.errors import BilensError, check_choice, check_fields
from bilens.core.types import NORM_KINDS as NORMS
from bilens.core.types import POSITIONS


@dataclass(frozen=True)
class ModelConfig:
    """Shape and normalization of a bilinear residual network.

    Args:
        d_in: input width (`x` is `[B, d_in]`).
        d_model: residual width.
        d_hidden: channels per bilinear layer.
        n_layers: number of bilinear layers.
        n_out: number of logits.
        norm: `"none"`, `"rms"` or `"layer"`.
        norm_position: `"post"` (the seed's layout) or `"pre"`.
        eps: added to the mean square inside the square root.
        learnable_gain: train the norms' `gamma` (and LayerNorm's `beta`); when False
            they stay at 1 (and 0) but are still stored in the checkpoint.
    """

    d_in: int
    d_model: int
    d_hidden: int
    n_layers: int
    n_out: int
    norm: Literal["none", "rms", "layer"] = "rms"
    norm_position: Literal["post", "pre"] = "post"
    eps: float = 1e-5
    learnable_gain: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "config", positive=("d_in", "d_model", "d_hidden", "n_layers",
                                               "n_out"), nonnegative=("eps",))
        check_choice(self.norm, NORMS, "config.norm")
        check_choice(self.norm_position, POSITIONS, "config.norm_position")

    @property
    def n_norms(self) -> int:
        """Norms in the network: one per layer, plus the final norm in pre-norm."""
        return self.n_layers + (self.norm_position == "pre")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a `config.json` dict; metadata keys are ignored."""
        names = {f.name for f in fields(cls)}
        required = {"d_in", "d_model", "d_hidden", "n_layers", "n_out", "norm", "norm_position",
                    "eps"}
        missing = sorted(required - data.keys())
        if missing:
            raise BilensError(f"config.json: missing {missing}; docs/spec.md §6 requires "
                              f"d_in, d_model, d_hidden, n_layers, n_out, norm, norm_position, eps")
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class TransformerConfig:
    """Shape, normalization and attention of the bilinear transformer (docs/spec.md §9).

    Args:
        vocab_size: tokens in the vocabulary (the logits' width).
        n_ctx: the longest sequence the model reads.
        d_model: residual width (`n_heads * d_head`).
        d_hidden: channels per bilinear MLP.
        n_layers: layers, each attention then a bilinear MLP.
        n_heads: attention heads per layer; `d_head = d_model / n_heads` must be even.
        norm: `"none"`, `"rms"` or `"layer"`.
        norm_position: `"pre"` (the default for this kind) or `"post"`.
        eps: added to the mean square inside the square root.
        rope_base: the rotary positions' base (`theta_i = rope_base^(-2i/d_head)`).
        attn_scale: `alpha`, the factor on every attention output.
    """

    vocab_size: int
    n_ctx: int
    d_model: int
    d_hidden: int
    n_layers: int
    n_heads: int
    norm: Literal["none", "rms", "layer"] = "rms"
    norm_position: Literal["post", "pre"] = "pre"
    eps: float = 1e-5
    rope_base: float = 10000.0
    attn_scale: float = 1.0
    kind: Literal["transformer"] = "transformer"

    def __post_init__(self) -> None:
        check_fields(self, "config", positive=("vocab_size", "n_ctx", "d_model", "d_hidden",
                                               "n_layers", "n_heads"))
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise BilensError(f"config: d_model={self.d_model} must be n_heads={self.n_heads} "
                              f"times an even d_head (rotary positions rotate pairs)")
        check_choice(self.norm, NORMS, "config.norm")
        check_choice(self.norm_position, POSITIONS, "config.norm_position")
        for name, low in (("eps", 0.0), ("rope_base", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
                raise BilensError(f"config.{name}: expected a number >= {low:g}, got {value!r}")
        if isinstance(self.attn_scale, bool) or not isinstance(self.attn_scale, (int, float)):
            raise BilensError(f"config.attn_scale: expected a number, got {self.attn_scale!r}")
        if self.kind != "transformer":
            raise BilensError(f"config.kind: expected 'transformer', got {self.kind!r}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_norms(self) -> int:
        """Norms in order: `2l` layer l's attention norm, `2l+1` its MLP norm, `2L` the final
        norm (pre-norm only)."""
        return 2 * self.n_layers + (self.norm_position == "pre")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Build from a `config.json` dict (docs/spec.md §9); metadata keys are ignored."""
        names = {f.name for f in fields(cls)}
        required = {"vocab_size", "n_ctx", "d_model", "d_hidden", "n_layers", "n_heads", "norm",
                    "norm_position", "eps"}
        missing = sorted(required - data.keys())
        if missing:
            raise BilensError(f"config.json: missing {missing}; docs/spec.md §9 requires "
                              f"{', '.join(sorted(required))}")
        return cls(**{k: v for k, v in data.items() if k in names})

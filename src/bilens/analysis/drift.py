"""Norm drift: how much ablating one channel moves the statistic `s` of the first norm
that sees it, against the seed's first-order formula, and what that drift does to the
target.

Ablating channel `(l, k)` adds `delta = D_l[:, k] (b - z_{l,k})` to the residual `r` read by
the next norm (post-norm: layer `l`'s own norm; pre-norm: norm `l + 1`, the final norm after
the last layer). Everything upstream is untouched, so that norm's new statistic is exact
in closed form (LayerNorm: `r` and `delta` centered):

    s'^2 = s^2 + (2 r . delta + |delta|^2) / d          measured ds/s = s'/s - 1
    seed formula:                                      ds/s ~ (r . delta) / |r|^2

The formula drops `|delta|^2` and `eps`, and holds when `delta` is small. Whether drift
matters for attribution is decided downstream, by `|actual - actual_frozen_norm| / |actual|`
(the drift's effect on the target relative to the channel's own effect), summarized by
`drift_summary`.

Example:
    >>> from bilens.core.config import ModelConfig
    >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
    >>> d = norm_drift(model, torch.randn(5, 8))
    >>> d.measured.shape
    torch.Size([5, 2, 32])
"""

# ruff: noqa: E741  (`l` is the layer index, as in docs/spec.md)

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.analysis.metrics import normalized_error, pearson
from bilens.core.baselines import resolve_baseline
from bilens.core.errors import check_inputs
from bilens.core.models.mlp import BilinearNet, Run
from bilens.core.norms import perturbed_scale
from bilens.core.types import BaselineSpec


@dataclass
class Drift:
    """Per channel `[B, L, H]`: the relative change of `s` when the channel is ablated."""

    measured: Float[Tensor, "batch layer hidden"]    # exact s'/s - 1 at the first norm after l
    formula: Float[Tensor, "batch layer hidden"]     # seed: (r . delta) / |r|^2
    delta_over_r: Float[Tensor, "batch layer hidden"]  # |delta| / |r|
    cosine: Float[Tensor, "batch layer hidden"]      # cos(r, delta)


@torch.no_grad()
def norm_drift(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"] | None = None,
    *,
    run: Run | None = None,
    baselines: BaselineSpec = "zero",
    reference: Tensor | None = None,
) -> Drift:
    """Measured and first-order norm drift for every channel, in one pass.

    Args:
        model: the network.
        inputs: `[B, d_in]`; or pass `run`, a clean `model.run(inputs)`.
        baselines: what ablation sets `z_{l,k}` to (see `bilens.core.baselines`).
        reference: inputs for `baselines="mean"`.

    Returns:
        a `Drift` of `[B, n_layers, d_hidden]` tensors. With no norm, all zero.

    Example:
        >>> from bilens.core.config import ModelConfig
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> d = norm_drift(model, torch.randn(5, 8))
        >>> bool(d.delta_over_r.max() < 0.5)        # small writes: the seed's formula holds
        True
        >>> pearson(d.formula, d.measured) > 0.9
        True
    """
    cfg = model.config
    if run is None:
        check_inputs(inputs, cfg.d_in)
        run = model.run(inputs.to(device=model.device, dtype=model.dtype), check=False)
    b = resolve_baseline(baselines, model, run.z, reference)
    dz = b - run.z                                                # b - z         [B, L, H]
    if cfg.norm == "none":
        zeros = torch.zeros_like(dz)
        return Drift(zeros, zeros.clone(), zeros.clone(), zeros.clone())
    shift = 0 if cfg.norm_position == "post" else 1
    out: dict[str, list[Tensor]] = {"measured": [], "formula": [], "ratio": [], "cos": []}
    for l, layer in enumerate(model.layers):
        r = run.resid[:, l + shift]                               # the norm's input [B, d]
        s = run.scale[:, l + shift]                               # its s             [B]
        D = layer.D                                               # [d, H]
        if cfg.norm == "layer":
            r = r - r.mean(-1, keepdim=True)
            D = D - D.mean(0, keepdim=True)
        r_dot = (r @ D) * dz[:, l]                                # r . delta         [B, H]
        delta2 = D.square().sum(0) * dz[:, l].square()            # |delta|^2         [B, H]
        r2 = r.square().sum(-1, keepdim=True)                     # |r|^2             [B, 1]
        s = s[:, None]
        s_new, ds2 = perturbed_scale(s, r_dot, delta2, cfg.d_model)    # s' (exact)  [B, H]
        out["measured"].append(ds2 / (s * (s + s_new)))           # s'/s - 1, stably
        out["formula"].append(r_dot / r2)
        out["ratio"].append((delta2 / r2).sqrt())
        out["cos"].append(r_dot / (delta2 * r2).sqrt().clamp_min(torch.finfo(r.dtype).tiny))
    return Drift(*(torch.stack(out[k], 1) for k in ("measured", "formula", "ratio", "cos")))


def _quantiles(x: Tensor) -> dict[str, float]:
    x = x[torch.isfinite(x)].double().cpu()
    if x.numel() == 0:
        return {"mean": math.nan, "median": math.nan, "p90": math.nan, "p99": math.nan}
    if x.numel() > 2**24:   # torch.quantile's limit
        x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[: 2**24]]
    q = x.quantile(torch.tensor([0.5, 0.9, 0.99], dtype=x.dtype)).tolist()
    return {"mean": x.mean().item(), "median": q[0], "p90": q[1], "p99": q[2]}


def effect_ratio(
    actual: Float[Tensor, "batch layer hidden"],
    actual_frozen_norm: Float[Tensor, "batch layer hidden"],
) -> Float[Tensor, "batch layer hidden"]:
    """`|actual - actual_frozen_norm| / |actual|` per channel: the drift's effect on the target
    relative to the channel's own effect (NaN where not ablated or `actual == 0`)."""
    ratio = (actual - actual_frozen_norm).abs() / actual.abs()
    return torch.where(actual != 0, ratio, torch.full_like(ratio, math.nan))


def _summary(drift: Drift, actual: Tensor, actual_frozen_norm: Tensor, d_model: int
             ) -> dict[str, Any]:
    ablated = torch.isfinite(actual)
    nan = torch.full_like(drift.measured, math.nan)
    measured = torch.where(ablated, drift.measured, nan)
    formula = torch.where(ablated, drift.formula, nan)
    ratio = effect_ratio(actual, actual_frozen_norm)
    upper = actual.abs() >= _quantiles(actual.abs())["median"]      # NaN median: none
    ratio_upper = torch.where(upper, ratio, torch.full_like(ratio, math.nan))
    ratio_med = _quantiles(torch.where(ablated, drift.delta_over_r, nan))["median"]
    return {
        "abs_ds_over_s": _quantiles(measured.abs()),
        "seed_estimate": ratio_med / math.sqrt(d_model),   # seed: |delta|/|r| / sqrt(d)
        "delta_over_r": _quantiles(torch.where(ablated, drift.delta_over_r, nan)),
        "abs_cosine": _quantiles(torch.where(ablated, drift.cosine, nan).abs()),
        "formula_pearson": pearson(formula, measured),
        "formula_ne": normalized_error(formula, measured),
        "effect_ratio": _quantiles(ratio),                 # |a - af| / |a| per channel
        "effect_ratio_upper_half": _quantiles(ratio_upper),
        "effect_ne": normalized_error(actual_frozen_norm, actual),   # sum|a - af| / sum|a|
    }


def drift_summary(
    drift: Drift,
    actual: Float[Tensor, "batch layer hidden"],
    actual_frozen_norm: Float[Tensor, "batch layer hidden"],
    d_model: int,
) -> dict[str, Any]:
    """Summaries of the drift over the ablated channels (finite `actual`), overall and per
    layer.

    Returns:
        `{"overall": s, "per_layer": [s]}` with, in each `s`: `abs_ds_over_s` (mean, median,
        p90, p99 of |measured ds/s|), `seed_estimate` (the seed's `|delta|/|r| / sqrt(d)`
        with the median `|delta|/|r|`), `delta_over_r`, `abs_cosine`, `formula_pearson`
        and `formula_ne` (the formula against the measured drift), `effect_ratio` and
        `effect_ratio_upper_half` (quantiles of `|a - af| / |a|`, all channels and those with
        `|a|` in the upper half), `effect_ne` (`sum|a - af| / sum|a|`).
    """
    def layer(l: int) -> Drift:
        return Drift(*(t[:, l : l + 1] for t in (drift.measured, drift.formula,
                                                  drift.delta_over_r, drift.cosine)))

    return {"overall": _summary(drift, actual, actual_frozen_norm, d_model),
            "per_layer": [_summary(layer(l), actual[:, l : l + 1],
                                   actual_frozen_norm[:, l : l + 1], d_model)
                          for l in range(actual.shape[1])]}

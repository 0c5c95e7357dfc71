"""How far predicted effects lie from actual ones (docs/spec.md §5).

With `p` predicted and `a` actual effects of the same channels (any matching shapes;
NaN in either marks a pair that was not measured and is ignored):

- normalized error `NE = sum|p - a| / sum|a|` (0 is perfect)
- Pearson and Spearman correlation of `p` and `a`
- top-k recall: per input, the share of the `k` channels of largest `|a|` found among
  the `k` of largest `|p|`, averaged over inputs
- sign agreement: the share of pairs with `sign(p) == sign(a)` among those whose `|a|`
  is at least the median `|a|` (the upper half) and nonzero

A metric with nothing to measure is **undefined**, NaN here (and in `metrics.json`), never
a perfect-looking number: NE, the correlations, recall and sign agreement all are when
every actual effect is 0 (there is no channel that matters, so none can be found).

`evaluate` reports them overall, per layer and per input; `error_decomposition` splits
the total error `a - p` into norm drift `a - a_frozen_norm` and gating interference
`a_frozen_norm - p` (docs/spec.md §3).

Example:
    >>> p = torch.tensor([1.0, 2.0, -3.0]); a = torch.tensor([1.0, 1.0, -2.0])
    >>> normalized_error(p, a)
    0.5
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from scipy import stats
from torch import Tensor

DEFAULT_KS = (1, 10, 100)


def _pairs(p: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """Flattened float64 pairs where both are finite."""
    if p.shape != a.shape:
        raise ValueError(f"predicted and actual must have the same shape, got {list(p.shape)} "
                         f"and {list(a.shape)}")
    p, a = p.detach().double().flatten().cpu(), a.detach().double().flatten().cpu()
    keep = torch.isfinite(p) & torch.isfinite(a)
    return p[keep], a[keep]


def normalized_error(p: Tensor, a: Tensor) -> float:
    """`sum|p - a| / sum|a|` over the finite pairs; NaN when there are none or all `a` are 0."""
    p, a = _pairs(p, a)
    denom = a.abs().sum().item()
    return (p - a).abs().sum().item() / denom if denom > 0 else math.nan


def pearson(p: Tensor, a: Tensor) -> float:
    """Pearson correlation over the finite pairs; NaN for fewer than 2 or a constant side."""
    p, a = _pairs(p, a)
    if p.numel() < 2:
        return math.nan
    pc, ac = p - p.mean(), a - a.mean()
    denom = (pc.square().sum() * ac.square().sum()).sqrt().item()
    return (pc * ac).sum().item() / denom if denom > 0 else math.nan


def spearman(p: Tensor, a: Tensor) -> float:
    """Spearman rank correlation (ties averaged) over the finite pairs; NaN if undefined."""
    p, a = _pairs(p, a)
    if p.numel() < 2 or p.min() == p.max() or a.min() == a.max():
        return math.nan
    return float(stats.spearmanr(p.numpy(), a.numpy()).statistic)


def sign_agreement(p: Tensor, a: Tensor) -> float:
    """Share of pairs with matching sign among those with `|a| >= median|a|` and `a != 0`."""
    p, a = _pairs(p, a)
    if a.numel() == 0:
        return math.nan
    big = (a.abs() >= a.abs().quantile(0.5)) & (a != 0)
    if not big.any():
        return math.nan
    return (torch.sign(p[big]) == torch.sign(a[big])).double().mean().item()


def topk_recall(
    p: Float[Tensor, "batch channel"], a: Float[Tensor, "batch channel"], k: int
) -> float:
    """Per input (row), the share of the `k` largest-`|a|` channels among the `k` largest-`|p|`
    ones, averaged over inputs. Only finite pairs compete; a row with `n < k` of them uses
    `k = n`; rows with none, or whose actual effects are all 0 (no channel matters, so the
    "largest" are arbitrary), are skipped: NaN, undefined, if all are.

    Args:
        p, a: `[B, C]` (any trailing axes are flattened into channels).
        k: how many channels.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p, a = p.detach().double().cpu().flatten(1), a.detach().double().cpu().flatten(1)
    valid = torch.isfinite(p) & torch.isfinite(a)
    ninf = torch.tensor(-math.inf, dtype=torch.float64)
    recalls = []
    for row_p, row_a, row_v in zip(p, a, valid, strict=True):
        n = int(row_v.sum())
        kk = min(k, n)
        if kk == 0 or not row_a[row_v].any():
            continue
        top_a = torch.where(row_v, row_a.abs(), ninf).topk(kk).indices
        top_p = torch.where(row_v, row_p.abs(), ninf).topk(kk).indices
        hits = torch.isin(top_a, top_p).sum().item()
        recalls.append(hits / kk)
    return sum(recalls) / len(recalls) if recalls else math.nan


def metric_set(
    p: Float[Tensor, "batch ..."], a: Float[Tensor, "batch ..."], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """All docs/spec.md §5 metrics for one group of pairs (leading axis = inputs, for top-k).

    Returns:
        `{"n", "normalized_error", "pearson", "spearman", "recall@k"..., "sign_agreement"}`.
    """
    out: dict[str, float] = {"n": int((torch.isfinite(p) & torch.isfinite(a)).sum())}
    out["normalized_error"] = normalized_error(p, a)
    out["pearson"] = pearson(p, a)
    out["spearman"] = spearman(p, a)
    for k in ks:
        out[f"recall@{k}"] = topk_recall(p.reshape(p.shape[0], -1), a.reshape(a.shape[0], -1), k)
    out["sign_agreement"] = sign_agreement(p, a)
    return out


def evaluate(
    p: Float[Tensor, "batch layer hidden"],
    a: Float[Tensor, "batch layer hidden"],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """docs/spec.md §5 metrics overall, per layer and per input.

    Args:
        p: predicted effects `[B, L, H]`.
        a: actual effects `[B, L, H]`, NaN where the channel was not ablated.
        ks: the `k` of top-k recall.

    Returns:
        `{"overall": {...}, "per_layer": [{...} per layer], "per_input": {metric: [B floats]}}`;
        per-input top-k ranks the channels of all layers of that input together.

    Example:
        >>> m = evaluate(torch.randn(4, 2, 8), torch.randn(4, 2, 8), ks=(3,))
        >>> sorted(m["overall"])[:3]
        ['n', 'normalized_error', 'pearson']
    """
    overall = metric_set(p, a, ks)
    per_layer = [metric_set(p[:, l], a[:, l], ks) for l in range(p.shape[1])]
    rows = [metric_set(p[i : i + 1], a[i : i + 1], ks) for i in range(p.shape[0])]
    per_input = {key: [row[key] for row in rows] for key in overall}
    return {"overall": overall, "per_layer": per_layer, "per_input": per_input}


def decompose(
    p: Tensor, a: Tensor, a_frozen_norm: Tensor
) -> dict[str, Tensor]:
    """Split the error of each pair: `total = a - p = drift + gating`.

    Returns:
        `{"total": a - p, "drift": a - a_frozen_norm, "gating": a_frozen_norm - p}`.
    """
    return {"total": a - p, "drift": a - a_frozen_norm, "gating": a_frozen_norm - p}


def _shares(p: Tensor, a: Tensor, af: Tensor) -> dict[str, float]:
    keep = torch.isfinite(p) & torch.isfinite(a) & torch.isfinite(af)
    p, a, af = (t.detach().double().cpu()[keep.cpu()] for t in (p, a, af))
    parts = decompose(p, a, af)
    total, drift, gating = (parts[k].abs().sum().item() for k in ("total", "drift", "gating"))
    scale = a.abs().sum().item()
    both = drift + gating

    def ratio(x: float, y: float) -> float:
        return x / y if y > 0 else math.nan

    return {
        "normalized_error": ratio(total, scale),
        "drift_ne": ratio(drift, scale),        # sum|a - af| / sum|a|
        "gating_ne": ratio(gating, scale),      # sum|af - p| / sum|a|
        "drift_share": ratio(drift, both),      # sum|drift| / (sum|drift| + sum|gating|)
        "gating_share": ratio(gating, both),
    }


def error_decomposition(
    p: Float[Tensor, "batch layer hidden"],
    a: Float[Tensor, "batch layer hidden"],
    a_frozen_norm: Float[Tensor, "batch layer hidden"],
) -> dict[str, Any]:
    """How much of the error is norm drift and how much gating interference, overall and
    per layer.

    Args:
        p: predicted effects; a: actual effects (real network); a_frozen_norm: actual
            effects with every norm held at its clean statistics. NaN pairs are ignored.

    Returns:
        `{"overall": shares, "per_layer": [shares]}`, shares being `normalized_error`,
        `drift_ne`, `gating_ne` (each `sum|.| / sum|a|`), `drift_share` and `gating_share`
        (each `sum|.| / (sum|drift| + sum|gating|)`).

    Example:
        >>> a = torch.tensor([[[2.0]]]); af = torch.tensor([[[1.5]]]); p = torch.tensor([[[1.0]]])
        >>> error_decomposition(p, a, af)["overall"]["drift_share"]
        0.5
    """
    return {"overall": _shares(p, a, a_frozen_norm),
            "per_layer": [_shares(p[:, l], a[:, l], a_frozen_norm[:, l])
                          for l in range(p.shape[1])]}

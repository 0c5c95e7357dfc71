"""Numbers over seeds and sweep points: the mean and spread of every summary number per
group of rows (`aggregate`), a rank correlation for trends (`spearman`), and which
attribution modes a table measured (`modes_in`). Rows are the dicts `Runner.evaluate`
returns; tables are lists of aggregated rows.

Example:
    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MODES = ("frozen", "live", "renorm")     # every mode verified; the claims use frozen and live


def get(row: dict[str, Any], path: str) -> Any:
    """`get(row, "frozen.ne")` -> `row["frozen"]["ne"]` (NaN where absent)."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return math.nan
        value = value[part]
    return value


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def spearman(xs: list[float], ys: list[float]) -> float:
    """`metrics.spearman` over a sweep's points (ties averaged); NaN for < 3 finite pairs,
    too few for a trend."""
    import torch

    from bilens.analysis.metrics import spearman as rank_correlation

    if sum(math.isfinite(x) and math.isfinite(y) for x, y in zip(xs, ys, strict=True)) < 3:
        return math.nan
    return rank_correlation(torch.tensor(xs, dtype=torch.float64),
                            torch.tensor(ys, dtype=torch.float64))


SUMMARY_PATHS = (
    "test_accuracy", "active_fraction", "train_time",
    *(f"{m}.{k}" for m in MODES for k in ("ne", "pearson", "spearman", "top10", "sign")),
    "drift.ne_drift", "drift.ne_gating", "drift.drift_share", "drift.ds_over_s",
    "drift.ds_over_s_median", "drift.seed_estimate", "drift.delta_over_r",
    "drift.formula_corr", "drift.effect_ratio", "verify_time",
)
LIST_PATHS = (*(f"{m}.ne_per_layer" for m in MODES), "drift.ne_drift_per_layer",
              "drift.ne_gating_per_layer")


def aggregate(rows: list[dict[str, Any]], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Group rows by the `by` keys and give every summary number as mean and `_std`.

    Per-layer lists (`LIST_PATHS`) are averaged elementwise.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    table = []
    for key, members in groups.items():
        out: dict[str, Any] = dict(zip(by, key, strict=False))
        out["n_seeds"] = len(members)
        for k in ("dataset", "d_model", "d_hidden", "n_layers", "l1"):
            values = {m.get(k) for m in members}
            if len(values) == 1 and k not in out:
                out[k] = values.pop()               # shared by the group: keep it
        for path in SUMMARY_PATHS:
            m, s = mean_std(get(r, path) for r in members)
            out[path] = m
            out[path + "_std"] = s
        for path in LIST_PATHS:
            lists = [get(r, path) for r in members]
            lists = [v for v in lists if isinstance(v, list)]
            if lists and all(len(v) == len(lists[0]) for v in lists):
                out[path] = [mean_std(col)[0] for col in zip(*lists, strict=False)]
        table.append(out)
    return table


def modes_in(table: list[dict[str, Any]]) -> list[str]:
    """The attribution modes the table measured (frozen and live always, renorm if run)."""
    return [m for m in MODES if any(isinstance(r.get(f"{m}.ne"), float) and
                                    math.isfinite(r[f"{m}.ne"]) for r in table)] \
        or ["frozen", "live"]

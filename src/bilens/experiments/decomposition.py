"""The claim "normalization leaves weight-based features intact", judged on decompositions.

Input: one record per trained model, `{"dataset", "norm", "position", "seed",
"faithfulness"}`, the last being `Decomposition.faithfulness` (bilens.analysis
.eigen_faithfulness) measured on that model's test inputs with every layer decomposed.

What is measured, on the last layer (whose direct path is its whole path to the logits),
each value the mean over the targets, then mean ± sd (sample sd) over seeds:

- `overlap@k`: the top-k eigenspace overlap `|V_k^T V'_k(x)|_F^2 / k` of the frozen `Q(w)`
  and the live-norm linearization's `Q(w_live(x))`, averaged over inputs (1: the frozen
  features are the real network's; for k = 1 the squared cosine of the top eigenvectors).
- `frozen@k`, `live@k`: the target's error when the layer's output along `w` is cut to its
  rank-k truncation, predicted with frozen statistics and measured with every norm live,
  as a fraction of the layer's direct contribution; `extra@k = live@k - frozen@k`, what
  live normalization adds to the truncation error.

The rule. A normalized configuration (rms or layer, post or pre) keeps its features
**intact at k** when both

1. `overlap@k >= STABLE_OVERLAP` (0.9), and
2. `extra@k` is at most `SMALL_EXTRA` (0.05, five points of the direct contribution) or
   **not distinguishable** from zero: `|mean| <= 2 sd` over seeds (the one noise rule; with
   a single seed, sd is unknown and only the threshold applies).

Over the normalized configurations x k in `KS` (1, 4, 16): `holds` when every cell is
intact, `fails` when at most half are, `partly` otherwise; `not measured` without records.
The same noise rule says whether a normalized model's `frozen@k` differs from the no-norm
model's at the same position (reported in the numbers, not part of the verdict: it is a
question of what the network learns, not of whether the picture survives the norm).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from bilens.experiments.stats import NOISE_SD, noise_compare

KS = (1, 4, 16)
STABLE_OVERLAP = 0.9
SMALL_EXTRA = 0.05
CLAIM = "normalization leaves weight-based features intact"
NORMED = [(n, p) for n in ("rms", "layer") for p in ("post", "pre")]


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample sd (NaN sd for fewer than two values; NaN values dropped)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan


def not_distinguishable(mean: float, sd: float, reference: float = 0.0) -> bool:
    """The noise rule: `mean` within `NOISE_SD` sd of `reference` (False when sd is NaN)."""
    return math.isfinite(sd) and abs(mean - reference) <= NOISE_SD * sd


def seed_values(faith: dict[str, Any], ks: Iterable[int] = KS) -> dict[str, float]:
    """One model's last-layer numbers at each k (NaN where k is not measured)."""
    last = faith.get("last_layer") or {}
    out: dict[str, float] = {}
    grid, stab = faith.get("ks", []), last.get("stability", {})
    for k in ks:
        i = grid.index(k) if k in grid else None
        j = stab.get("ks", []).index(k) if k in stab.get("ks", []) else None
        frozen = last["frozen_ne_mean"][i] if i is not None and last else math.nan
        live = last["live_ne_mean"][i] if i is not None and last else math.nan
        out[f"frozen@{k}"], out[f"live@{k}"], out[f"extra@{k}"] = frozen, live, live - frozen
        out[f"overlap@{k}"] = stab["overlap_mean"][j] if j is not None else math.nan
    out["direct_share_total"] = faith.get("direct_share_total_mean", math.nan)
    return out


def decomposition_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, norm, position): every `seed_values` key as mean and `_sd`."""
    groups: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for rec in records:
        key = (rec.get("dataset", ""), rec["norm"], rec["position"])
        groups.setdefault(key, []).append(seed_values(rec["faithfulness"]))
    rows = []
    for (dataset, norm, position), seeds in sorted(groups.items()):
        row: dict[str, Any] = {"dataset": dataset, "norm": norm, "position": position,
                               "n_seeds": len(seeds)}
        for name in seeds[0]:
            row[name], row[f"{name}_sd"] = mean_sd(s[name] for s in seeds)
        rows.append(row)
    return rows


def _intact(row: dict[str, Any], k: int) -> bool:
    overlap, extra, sd = row[f"overlap@{k}"], row[f"extra@{k}"], row[f"extra@{k}_sd"]
    stable = math.isfinite(overlap) and overlap >= STABLE_OVERLAP
    small = math.isfinite(extra) and (extra <= SMALL_EXTRA or not_distinguishable(extra, sd))
    return stable and small


def claim_features_intact(records: list[dict[str, Any]], dataset: str | None = None,
                          ks: Iterable[int] = KS) -> dict[str, Any]:
    """The claim's verdict over the normalized configurations of one dataset (or all).

    Returns:
        A claims-table row: `id, claim, seed, verdict, measured, rule, why, numbers` (the
        keys of `bilens.experiments.claims`).
    """
    rows = [r for r in decomposition_table(records) if dataset in (None, r["dataset"])]
    normed = [r for r in rows if (r["norm"], r["position"]) in NORMED]
    base = {"id": "features_intact", "claim": CLAIM,
            "seed": "with frozen statistics the eigenvectors do not depend on the input"}
    rule = (f"a normalized config is intact at k when its top-k eigenspace overlap (frozen vs "
            f"live-norm Q) >= {STABLE_OVERLAP:g} and live normalization adds at most "
            f"{SMALL_EXTRA:.0%} to the rank-k truncation error (or an amount within "
            f"{NOISE_SD:g} sd of 0 over seeds); holds if every config x k in {list(ks)} is "
            f"intact, fails if at most half are, partly otherwise")
    if not normed:
        return {**base, "verdict": "not measured", "measured": "-", "rule": rule,
                "why": "run benchmarks/decomposition_table.py", "numbers": {}}
    cells = {(r["norm"], r["position"], k): _intact(r, k) for r in normed for k in ks}
    n_ok = sum(cells.values())
    verdict = ("holds" if n_ok == len(cells) else "fails" if n_ok <= len(cells) / 2
               else "partly")
    measured = "; ".join(
        f"{r['norm']}/{r['position']}: " + ", ".join(
            f"k={k} overlap {_pm(r, f'overlap@{k}')} extra {_pm(r, f'extra@{k}', pct=True)}"
            for k in ks) for r in normed)
    broken = [f"{n}/{p} k={k}" for (n, p, k), ok in cells.items() if not ok]
    why = "" if not broken else "not intact: " + ", ".join(broken)
    numbers = {"intact": {f"{n}/{p}/k{k}": ok for (n, p, k), ok in cells.items()},
               "rows": rows, "versus_none": versus_none(rows, ks)}
    return {**base, "verdict": verdict, "measured": measured, "rule": rule, "why": why,
            "numbers": numbers}


def versus_none(rows: list[dict[str, Any]], ks: Iterable[int] = KS) -> dict[str, str]:
    """`frozen@k` of each normalized config against no norm at the same position and
    dataset: `lower`, `higher` or `not distinguishable` (`stats.noise_compare`, the one
    noise rule: more than 2 pooled sd apart)."""
    out = {}
    for r in rows:
        none = next((b for b in rows if b["norm"] == "none" and b["position"] == r["position"]
                     and b["dataset"] == r["dataset"]), None)
        if none is None or r["norm"] == "none":
            continue
        for k in ks:
            found = noise_compare(r[f"frozen@{k}"], r[f"frozen@{k}_sd"], r["n_seeds"],
                                  none[f"frozen@{k}"], none[f"frozen@{k}_sd"], none["n_seeds"])
            out[f"{r['dataset']}/{r['norm']}/{r['position']}/k{k}"] = found["verdict"]
    return out


def _pm(row: dict[str, Any], name: str, pct: bool = False) -> str:
    mean, sd = row[name], row[f"{name}_sd"]
    scale, unit = (100, "%") if pct else (1, "")
    if not math.isfinite(mean):
        return "n/a"
    text = f"{scale * mean:.3g}{unit}"
    return text + (f" ± {scale * sd:.2g}{unit}" if math.isfinite(sd) else "")

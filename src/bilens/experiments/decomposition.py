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
A cell with `k >= d_model` (when the records give `d_model`) is left out as not applicable:
there the truncation is the whole form and the overlap 1 by construction. Records of
several datasets (the MLP digits models beside the synthetic-lm transformers, say) are
judged as one set of cells, each named by its dataset, with each dataset's own verdict in
`numbers["by_dataset"]`. A random k-dimensional subspace overlaps the top-k one by
`k / d_model` on average (`numbers["chance_overlap"]`): 0.5 at k = 16 for d_model 32, so the
0.9 line stays well above chance for every model the comparisons train (d_model >= 32).

The records of a transformer (`bilens.experiments.decompose_models`, kind `transformer`)
have the same keys: every (sequence, position) is one input, the last layer's output at a
position reaches only that position's logits, so `frozen@k`, `live@k` and `overlap@k` mean
what they mean for the MLP (`bilens.analysis.lm_decompose`).
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
    d_models: dict[tuple[str, str, str], set] = {}
    for rec in records:
        key = (rec.get("dataset", ""), rec["norm"], rec["position"])
        groups.setdefault(key, []).append(seed_values(rec["faithfulness"]))
        d_models.setdefault(key, set()).add(rec.get("d_model"))
    rows = []
    for (dataset, norm, position), seeds in sorted(groups.items()):
        known = {d for d in d_models[dataset, norm, position] if d is not None}
        row: dict[str, Any] = {"dataset": dataset, "norm": norm, "position": position,
                               "n_seeds": len(seeds), "d_model": min(known) if known else None}
        for name in seeds[0]:
            row[name], row[f"{name}_sd"] = mean_sd(s[name] for s in seeds)
        rows.append(row)
    return rows


def _intact(row: dict[str, Any], k: int) -> bool:
    overlap, extra, sd = row[f"overlap@{k}"], row[f"extra@{k}"], row[f"extra@{k}_sd"]
    stable = math.isfinite(overlap) and overlap >= STABLE_OVERLAP
    small = math.isfinite(extra) and (extra <= SMALL_EXTRA or not_distinguishable(extra, sd))
    return stable and small


def _verdict(cells: dict[Any, bool]) -> str:
    n_ok = sum(cells.values())
    return "holds" if n_ok == len(cells) else "fails" if n_ok <= len(cells) / 2 else "partly"


def _label(dataset: str, norm: str, position: str, several: bool) -> str:
    return f"{dataset} {norm}/{position}" if several else f"{norm}/{position}"


def _applies(row: dict[str, Any], k: int) -> bool:
    """A cell means something only below full rank (`k < d_model`, when it is known)."""
    return row.get("d_model") is None or k < row["d_model"]


def claim_features_intact(records: list[dict[str, Any]], dataset: str | None = None,
                          ks: Iterable[int] = KS) -> dict[str, Any]:
    """The claim's verdict over the normalized configurations of one dataset (or all).

    Args:
        records: `{"dataset", "norm", "position", "seed", "faithfulness"}` per model, and
            optionally `d_model` (`decompose_compared`'s records, MLP or transformer).
        dataset: judge this dataset's records only; None judges every record, each cell
            named by its dataset when there are several.
        ks: the k of the cells.

    Returns:
        A claims-table row: `id, claim, seed, verdict, measured, rule, why, numbers` (the
        keys of `bilens.experiments.claims`).
    """
    ks = list(ks)
    rows = [r for r in decomposition_table(records) if dataset in (None, r["dataset"])]
    normed = [r for r in rows if (r["norm"], r["position"]) in NORMED]
    base = {"id": "features_intact", "claim": CLAIM,
            "seed": "with frozen statistics the eigenvectors do not depend on the input"}
    rule = (f"a normalized config is intact at k when its top-k eigenspace overlap (frozen vs "
            f"live-norm Q) >= {STABLE_OVERLAP:g} and live normalization adds at most "
            f"{SMALL_EXTRA:.0%} to the rank-k truncation error (or an amount within "
            f"{NOISE_SD:g} sd of 0 over seeds); holds if every config x k in {ks} is "
            f"intact, fails if at most half are, partly otherwise")
    cells = {(r["dataset"], r["norm"], r["position"], k): _intact(r, k)
             for r in normed for k in ks if _applies(r, k)}
    if len(cells) < len(normed) * len(ks):
        rule += " (k >= d_model left out: there the truncation is the whole form)"
    if not cells:
        return {**base, "verdict": "not measured", "measured": "-", "rule": rule,
                "why": "run benchmarks/decomposition_table.py", "numbers": {}}
    several = len({r["dataset"] for r in normed}) > 1
    measured = "; ".join(
        f"{_label(r['dataset'], r['norm'], r['position'], several)}: " + ", ".join(
            f"k={k} overlap {_pm(r, f'overlap@{k}')} extra {_pm(r, f'extra@{k}', pct=True)}"
            for k in ks if _applies(r, k)) for r in normed)
    broken = [f"{_label(d, n, p, several)} k={k}" for (d, n, p, k), ok in cells.items()
              if not ok]
    numbers = {"intact": {f"{d}/{n}/{p}/k{k}" if several else f"{n}/{p}/k{k}": ok
                          for (d, n, p, k), ok in cells.items()},
               "not_applicable": [f"{r['dataset']}/{r['norm']}/{r['position']}/k{k}"
                                  for r in normed for k in ks if not _applies(r, k)],
               "by_dataset": {d: _verdict({c: ok for c, ok in cells.items() if c[0] == d})
                              for d in sorted({c[0] for c in cells})},
               "chance_overlap": {f"{r['dataset']}/k{k}": k / r["d_model"] for r in normed
                                  for k in ks if r.get("d_model") and _applies(r, k)},
               "rows": rows, "versus_none": versus_none(rows, ks)}
    return {**base, "verdict": _verdict(cells), "measured": measured, "rule": rule,
            "why": "" if not broken else "not intact: " + ", ".join(broken),
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

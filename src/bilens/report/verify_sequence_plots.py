"""The table and the PNGs of a sequence model's `VerifyResult` (`metrics["kind"] ==
"sequence"`, from `analysis.verify_sequence`).

- `scatter.png`: predicted against actual effect per mode, one point per reachable node,
  coloured by layer;
- `error_by_layer.png`: NE per layer and mode, and the error split of `frozen` per layer;
- `error_by_distance.png`: NE and Pearson by the distance `p - t` of node and target;
- `faithfulness.png`: the top-k node circuits, sum of predictions against the joint ablation.

The table is `report.tables.sequence_table`.

Example:
    >>> plot_sequence(result, "out")  # doctest: +SKIP
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bilens.report.verify_plots import _sample, _save, _scatter_panel, plot_faithfulness, plt

if TYPE_CHECKING:
    from bilens.analysis.verify_result import VerifyResult

def _reachable(result: VerifyResult, x: torch.Tensor) -> torch.Tensor:
    """`x` with the nodes that cannot reach the target set to NaN, `[N, L, T*H]`."""
    from bilens.analysis.verify_sequence import reachable

    t = result.tensors
    N, L, T, H = t["actual"].shape
    every = result.metrics["info"].get("target") == "mean-logprob"
    ok = reachable(t["target_position"].cpu(), L, T, every).expand(N, L, T, H)
    return torch.where(ok, x.cpu().double(), torch.nan).flatten(2)


def plot_scatter(result: VerifyResult, path: Path) -> Path:
    modes = result.modes
    a = _reachable(result, result.tensors["actual"])
    L = a.shape[1]
    fig, axes = plt.subplots(1, len(modes), figsize=(4.4 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        p, aa, layer = _sample(_reachable(result, result.predicted(mode)), a)
        _scatter_panel(ax, p, aa, layer, L)
        s = result.metrics["modes"][mode]["overall"]
        ax.set_title(f"{mode}: NE {s['normalized_error']:.3g}, r {s['pearson']:.4f}", fontsize=10)
        ax.set_xlabel("predicted effect")
        ax.set_ylabel("actual effect (exact ablation)")
    return _save(fig, path)


def plot_error_by_layer(result: VerifyResult, path: Path) -> Path:
    modes, m = result.modes, result.metrics
    L = len(m["split"]["per_layer"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(3.0 + 2.6 * L, 3.8))
    w = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        ax.bar([l - 0.4 + w * (i + 0.5) for l in range(L)],
               [s["normalized_error"] for s in m["modes"][mode]["per_layer"]], w * 0.9,
               color=f"C{i}", label=mode)
    keys = ("norm_drift", "attention_change", "gating")
    w2 = 0.8 / len(keys)
    for i, key in enumerate(keys):
        ax2.bar([l - 0.4 + w2 * (i + 0.5) for l in range(L)],
                [s[key] for s in m["split"]["per_layer"]], w2 * 0.9, label=key, color=f"C{i+4}")
    for a in (ax, ax2):
        a.set_xticks(range(L), [f"layer {l}" for l in range(L)])
        a.set_yscale("log")
        a.grid(axis="y", alpha=0.3)
        a.legend(fontsize=7)
    ax.set_title("NE = sum|p - a| / sum|a| per layer", fontsize=10)
    ax2.set_title("frozen's error split, sum|.| / sum|a|", fontsize=10)
    return _save(fig, path)


def plot_error_by_distance(result: VerifyResult, path: Path) -> Path:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for i, mode in enumerate(result.modes):
        rows = result.metrics["modes"][mode]["by_distance"]
        ds = [r["distance"] for r in rows]
        ax.plot(ds, [r["normalized_error"] for r in rows], "o-", ms=3, color=f"C{i}", label=mode)
        ax2.plot(ds, [r["pearson"] for r in rows], "o-", ms=3, color=f"C{i}", label=mode)
    for a in (ax, ax2):
        a.set_xlabel("distance p - t (target position - node position)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("NE")
    ax2.set_ylabel("Pearson")
    return _save(fig, path)


def plot_sequence(result: VerifyResult, outdir: str | os.PathLike) -> list[Path]:
    """Write the PNGs into `outdir` (created if needed); returns their paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_scatter(result, out / "scatter.png"),
             plot_error_by_layer(result, out / "error_by_layer.png"),
             plot_error_by_distance(result, out / "error_by_distance.png")]
    if any(result.metrics["modes"][m].get("circuit") for m in result.modes):
        paths.append(plot_faithfulness(result, out / "faithfulness.png"))
    return paths

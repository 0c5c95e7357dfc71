"""PNG plots of a `VerifyResult` (matplotlib, Agg backend, no display needed).

- `scatter.png`: predicted against actual effect, one panel per mode, one point per
  (input, channel), symmetric-log axes, colored by layer
- `error_per_layer.png`: normalized error per layer and mode (percent, log axis, the 5%
  line labelled), split into norm drift and gating interference
- `drift.png`: the seed's formula `(r . delta)/|r|^2` against the measured `ds/s`, and the
  drift's effect on the target relative to the channel's effect
- `faithfulness.png`: top-k circuits, sum of predictions against the joint ablation

Example:
    >>> paths = plot_verify(result, "out/plots")      # doctest: +SKIP
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

if TYPE_CHECKING:
    from bilens.analysis.verify import VerifyResult

MAX_POINTS = 25_000     # per panel; keeps the PNGs small
DPI = 80
SMALL_NE = 0.05         # "small" error (bilens.experiments.claims), the dotted line


def _save(fig, path: Path) -> Path:
    """Lay out, write `path` as PNG, and free the figure."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _sample(*ts: Tensor, max_points: int = MAX_POINTS) -> tuple[Tensor, ...]:
    """Flatten `[N, L, H]` tensors (plus a layer index), keep finite points, subsample."""
    n, n_layers, h = ts[0].shape
    layer = torch.arange(n_layers).view(1, -1, 1).expand(n, n_layers, h)
    flat = [t.detach().double().cpu().flatten() for t in ts] + [layer.flatten()]
    keep = torch.ones_like(flat[0], dtype=torch.bool)
    for t in flat[:-1]:
        keep &= torch.isfinite(t)
    flat = [t[keep] for t in flat]
    if flat[0].numel() > max_points:
        idx = torch.randperm(flat[0].numel(), generator=torch.Generator().manual_seed(0))
        flat = [t[idx[:max_points]] for t in flat]
    return tuple(flat)


def _linthresh(*xs: Tensor) -> float:
    """Linear region of a symlog axis: the 5th percentile of the nonzero magnitudes."""
    mags = torch.cat([x.abs()[x != 0] for x in xs])
    if mags.numel() == 0:
        return 1.0
    q = mags.quantile(0.05).item() if mags.numel() <= 2**24 else mags.median().item() / 100
    return 10 ** math.floor(math.log10(q)) if q > 0 else 1.0     # a decade boundary


def _percent_log(ax, label: str, small: bool = True) -> None:
    """A log y axis in percent (data already x100), as the tables write NE; the dotted 5%
    line labelled."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v:g}%" if v >= 1e-4 else f"{v:.0e}%"))
    ax.set_ylabel(label)
    if small:
        ax.axhline(100 * SMALL_NE, color="gray", lw=0.9, ls=":",
                   label=f"{100 * SMALL_NE:g}% (small error)")


def _diag(ax, lo: float, hi: float) -> None:
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", zorder=3)


def _scatter_panel(ax, x: Tensor, y: Tensor, layer: Tensor, n_layers: int) -> None:
    cmap = plt.get_cmap("viridis", max(n_layers, 2))
    ax.scatter(x, y, c=layer, cmap=cmap, vmin=-0.5, vmax=max(n_layers, 2) - 0.5, s=2,
               alpha=0.4, linewidths=0, rasterized=True)
    t = _linthresh(x, y)
    ax.set_xscale("symlog", linthresh=t, linscale=2)
    ax.set_yscale("symlog", linthresh=t, linscale=2)
    lim = max(x.abs().max().item(), y.abs().max().item(), t) * 1.2
    lo, hi = math.log10(t) + 1, math.log10(max(x.abs().max().item(), y.abs().max().item(), t))
    step = max(1, math.ceil((hi - lo) / 4))
    decades = [10.0 ** e for e in range(math.ceil(hi), math.floor(lo) - 1, -step) if e >= lo]
    ticks = [-v for v in decades] + [0.0] + decades[::-1]
    for axis in (ax.xaxis, ax.yaxis):    # 0 and a few decades, clear of the linear region
        axis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        axis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    _diag(ax, -lim, lim)
    ax.grid(alpha=0.3, lw=0.5)


def plot_scatter(result: VerifyResult, path: Path) -> Path:
    modes = result.modes
    actual = result.tensors["actual"]
    n_layers = actual.shape[1]
    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 4.4), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        p, a, layer = _sample(result.predicted(mode), actual)
        _scatter_panel(ax, p, a, layer, n_layers)
        s = result.metrics["modes"][mode]["overall"]
        ax.set_title(f"{mode}: NE {s['normalized_error']:.3g}, r {s['pearson']:.4f}", fontsize=10)
        ax.set_xlabel("predicted effect")
        ax.set_ylabel("actual effect (real network)")
    cmap = plt.get_cmap("viridis", max(n_layers, 2))
    handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(l), label=f"layer {l}")
               for l in range(n_layers)]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="upper left")
    return _save(fig, path)


def plot_error_per_layer(result: VerifyResult, path: Path) -> Path:
    modes = result.modes
    n_layers = result.tensors["actual"].shape[1]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(9.0, 2.0 + 2.4 * n_layers), 4.4),
                                  layout="constrained")
    width = 0.8 / len(modes)
    width2 = 0.8 / (len(modes) + 1)
    first = result.metrics["modes"][modes[0]]["decomposition"]["per_layer"]
    ax2.bar([l - 0.4 + width2 / 2 for l in range(n_layers)], [100 * d["drift_ne"] for d in first],
            width2 * 0.9, color="gray", hatch="//", label="norm drift  sum|a - a_fn|")
    for i, mode in enumerate(modes):
        dec = result.metrics["modes"][mode]["decomposition"]["per_layer"]
        xs = [l - 0.4 + width * (i + 0.5) for l in range(n_layers)]
        ax.bar(xs, [100 * d["normalized_error"] for d in dec], width * 0.9, color=f"C{i}",
               label=mode)
        xs2 = [l - 0.4 + width2 * (i + 1.5) for l in range(n_layers)]
        ax2.bar(xs2, [100 * d["gating_ne"] for d in dec], width2 * 0.9, color=f"C{i}",
                label=f"{mode}: sum|a_fn - p|")
    _percent_log(ax, "NE = sum|p - a| / sum|a| (%)")       # errors span decades across modes
    _percent_log(ax2, "sum|.| / sum|a| (%)")
    for a in (ax, ax2):                  # legends below the bars, never over them
        a.set_xticks(range(n_layers), [f"layer {l}" for l in range(n_layers)])
        a.grid(axis="y", alpha=0.3)
        a.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    ax.set_title("normalized error per layer", fontsize=10)
    ax2.set_title("error parts: drift (a - a_fn) and gating (a_fn - p)", fontsize=10)
    return _save(fig, path)


def plot_drift(result: VerifyResult, path: Path) -> Path:
    t = result.tensors
    n_layers = t["actual"].shape[1]
    dr = result.metrics["drift"]["overall"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 4.3))
    f, m, layer = _sample(t["drift.formula"], t["drift.measured"])
    _scatter_panel(ax, f, m, layer, n_layers)
    ax.set_xlabel("seed formula (r . delta) / |r|^2")
    ax.set_ylabel("measured ds/s at the ablated layer")
    ax.set_title(f"drift formula: r {dr['formula_pearson']:.4f}, NE {dr['formula_ne']:.3g}",
                 fontsize=10)
    a, af = t["actual"].double().cpu(), t["actual_frozen_norm"].double().cpu()
    ratio = ((a - af).abs() / a.abs())
    ratio = ratio[torch.isfinite(ratio) & (ratio > 0)]
    if ratio.numel():
        bins = torch.logspace(math.log10(ratio.min().item()), math.log10(ratio.max().item()) + 1e-9,
                              60).tolist()
        ax2.hist(ratio.numpy(), bins=bins, color="C3", alpha=0.8)
        ax2.set_xscale("log")
        ax2.axvline(ratio.median().item(), color="k", ls="--", lw=0.8, label="median")
        ax2.legend(fontsize=7)
    ax2.set_xlabel("|actual - actual_frozen_norm| / |actual|")
    ax2.set_ylabel("channels")
    ax2.set_title("drift's effect on the target / channel's effect", fontsize=10)
    return _save(fig, path)


def plot_faithfulness(result: VerifyResult, path: Path) -> Path:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for i, mode in enumerate(result.modes):
        curve = result.metrics["modes"][mode].get("circuit") or []
        ks = [c["k"] for c in curve]
        ax.plot(ks, [100 * c["normalized_error"] for c in curve], "o-", color=f"C{i}",
                label=mode)
        ax2.plot(ks, [c["mean_sum_predicted"] for c in curve], "o-", color=f"C{i}",
                 label=f"{mode}: sum of predictions")
        ax2.plot(ks, [c["mean_joint"] for c in curve], "s--", color=f"C{i}", mfc="none",
                 label=f"{mode}: actual joint effect")
        if curve and "additivity_error" in curve[0]:
            ax.plot(ks, [100 * c["additivity_error"] for c in curve], "s--", color=f"C{i}",
                    mfc="none", label=f"{mode}: sum of single actuals")
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        a.set_xlabel("k (top channels by |predicted| ablated together)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    _percent_log(ax, "sum|sum - joint| / sum|joint| (%)")
    ax.legend(fontsize=7)
    ax.set_ylim(bottom=0.1)              # k = 1 additivity is 0 up to rounding
    ax2.set_yscale("symlog", linthresh=0.1)
    ax.set_title("circuit faithfulness error", fontsize=10)
    ax2.set_ylabel("mean over inputs")
    ax2.set_title("predicted vs actual joint effect", fontsize=10)
    return _save(fig, path)


def plot_all(result: VerifyResult, outdir: Path) -> list[Path]:
    """Write every plot into `outdir`; returns the paths."""
    outdir = Path(outdir)
    paths = [plot_scatter(result, outdir / "scatter.png"),
             plot_error_per_layer(result, outdir / "error_per_layer.png"),
             plot_drift(result, outdir / "drift.png")]
    if any(result.metrics["modes"][m].get("circuit") for m in result.modes):
        paths.append(plot_faithfulness(result, outdir / "faithfulness.png"))
    return paths


def plot_verify(result: VerifyResult, outdir: str | os.PathLike) -> list[Path]:
    """Write the PNGs (scatter per mode, error per layer, drift formula, faithfulness) into
    `outdir` (created if needed); returns their paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    return plot_all(result, out)

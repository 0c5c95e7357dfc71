"""The report's plots: the comparison and each sweep, drawn with matplotlib (Agg) and
returned as PNG bytes, which the HTML page embeds and the Markdown links beside it.

Every error is drawn in percent on a log axis, as the tables write it, with the dotted
line at `SMALL_NE` (5%, "small" in `bilens.experiments.claims`) labelled. In a sweep the
color is the norm x position and the line style the mode; the norm-drift part of the
frozen error is drawn on top (hollow markers, thick dotted), since it is most of the frozen
error and would hide behind it. The drift panel compares the seed's estimate with the
*median* |ds/s| (what the estimate tracks), the mean beside it, faint. No norm is one
network in both positions and is drawn once.
"""

from __future__ import annotations

import io
import math
from typing import Any

from bilens.experiments.claims import SEED_DRIFT, SMALL_NE
from bilens.experiments.stats import modes_in
from bilens.report.tables import merge_none

HATCH = {"frozen": "", "live": "//", "renorm": ".."}
HATCH_NAME = {"frozen": "plain", "live": "hatched", "renorm": "dotted"}
LINES = {"frozen": "-o", "live": "--s", "renorm": "-.d"}
DRIFT_STYLE = {"ls": ":", "marker": "o", "mfc": "none", "ms": 9, "lw": 2.2, "zorder": 5}
COLORS = {("none", "post"): "#7f7f7f", ("none", "pre"): "#bcbcbc",
          ("rms", "post"): "#1f77b4", ("rms", "pre"): "#17becf",
          ("layer", "post"): "#d62728", ("layer", "pre"): "#ff9896"}


def _figure(ncols: int = 2, width: float = 5.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # constrained layout makes room for the legends drawn outside the axes
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.8), dpi=100,
                             layout="constrained")
    return plt, fig, axes


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _positive(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    keep = [(x, y) for x, y in zip(xs, ys, strict=True)
            if math.isfinite(x) and math.isfinite(y) and y > 0]
    return [k[0] for k in keep], [k[1] for k in keep]


def _percent_text(x: float) -> str:
    return f"{x:g}%" if x >= 1e-4 else f"{x:.0e}%"


def _percent_axis(ax: Any, label: str = "normalized error vs ablation (%)",
                  small: bool = True) -> None:
    """A log y axis in percent (the data are already x100), the 5% line labelled; minor
    ticks are labelled only when the axis spans less than a decade or so (matplotlib's
    `LogFormatter` thresholds)."""
    import matplotlib.ticker

    class Percent(matplotlib.ticker.LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return _percent_text(x)

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(Percent(labelOnlyBase=True))
    ax.yaxis.set_minor_formatter(Percent(labelOnlyBase=False))
    ax.set_ylabel(label)
    if small:
        ax.axhline(100 * SMALL_NE, color="gray", lw=0.9, ls=":",
                   label=f"{100 * SMALL_NE:g}% (small error)")


def plot_compare(cmp: dict[str, Any]) -> bytes:
    """Left: normalized error per configuration and mode (%, log). Right: test accuracy."""
    plt, fig, (ax, ax2) = _figure()
    table = merge_none(cmp["table"])
    labels = [f"{r['norm']}/{r['position']}" for r in table]
    xs = list(range(len(table)))
    modes = modes_in(table)
    width = 0.8 / len(modes)
    colors = [COLORS.get((r["norm"], r["position"]), COLORS[("none", "post")]) for r in table]
    for j, mode in enumerate(modes):
        vals = [100 * max(r[f"{mode}.ne"], 1e-6) if math.isfinite(r[f"{mode}.ne"]) else 0
                for r in table]
        ax.bar([x + (j - (len(modes) - 1) / 2) * width for x in xs], vals, width,
               hatch=HATCH[mode], color=colors, edgecolor="black", linewidth=0.5)
    _percent_axis(ax)
    ax.legend(fontsize=7, loc="center left")
    ax.set_xticks(xs, labels, rotation=30, ha="right")
    target = cmp["settings"].get("target", "predicted")
    ax.set_title(f"attribution error, target {target} (" + ", ".join(
        f"{m}: {HATCH_NAME[m]}" for m in modes) + ")", fontsize=9)
    accs = [100 * r["test_accuracy"] for r in table]
    errs = [100 * (r.get("test_accuracy_std") or 0.0) for r in table]
    ax2.bar(xs, accs, 0.6, yerr=errs, capsize=3, edgecolor="black", linewidth=0.5,
            color=colors)
    finite = [a for a in accs if math.isfinite(a)]
    if finite:
        ax2.set_ylim(max(0.0, min(finite) - 3), min(100.0, max(finite) + 1.5))
    ax2.set_xticks(xs, labels, rotation=30, ha="right")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_title(f"accuracy ({cmp['settings'].get('seeds', 1)} seed(s), mean ± sd)")
    return _png(plt, fig)


def _x(sweep: dict[str, Any], row: dict[str, Any]) -> float:
    return row["active_fraction"] if sweep["name"] == "sparsity" else float(row["x"])


def _legends(ax: Any, styles: list[Any]) -> None:
    """What each line style draws, in a small legend outside the axes (right)."""
    ax.legend(handles=styles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="line", title_fontsize=7)


def _color_legend(fig: Any, variants: list[tuple[str, str]]) -> None:
    """One legend of the colors (norm/position) below both panels, when there are several."""
    from matplotlib.lines import Line2D

    if len(variants) > 1:
        colors = [Line2D([], [], color=COLORS.get(v, "#333"), lw=3, label=f"{v[0]}/{v[1]}")
                  for v in variants]
        fig.legend(handles=colors, fontsize=8, loc="outside lower center",
                   ncol=len(variants), title="color: norm/position", title_fontsize=8)


def _error_styles(modes: list[str]) -> list[Any]:
    from matplotlib.lines import Line2D

    styles = [Line2D([], [], color="black", ls=LINES[m][:-1], marker=LINES[m][-1], ms=4,
                     label=m) for m in modes]
    styles.append(Line2D([], [], color="black", label="frozen: norm-drift part",
                         **{k: v for k, v in DRIFT_STYLE.items() if k != "zorder"}))
    styles.append(Line2D([], [], color="gray", ls=":", lw=0.9,
                         label=f"{100 * SMALL_NE:g}% (small error)"))
    return styles


def _integer_ticks(ax: Any, sweep: dict[str, Any]) -> None:
    """Depth-like sweeps tick at their integer values, not at 1.25 'layers'."""
    if sweep["name"] in ("depth", "position"):
        ax.set_xticks(sorted({int(r["x"]) for r in sweep["table"]}))


def _error_panel(ax: Any, sweep: dict[str, Any], variants: list[tuple[str, str]],
                 xlabel: str) -> None:
    """Every mode's error and the frozen error's drift part against the swept quantity."""
    modes = modes_in(sweep["table"])
    for v in variants:
        rows = sorted((r for r in sweep["table"] if (r["norm"], r["position"]) == v),
                      key=lambda r: _x(sweep, r))
        xs, color = [_x(sweep, r) for r in rows], COLORS.get(v, "#333")
        for m in modes:
            px, py = _positive(xs, [100 * r[f"{m}.ne"] for r in rows])
            if px:
                ax.plot(px, py, LINES[m], color=color, ms=4, zorder=3)
        px, py = _positive(xs, [100 * r["drift.ne_drift"] for r in rows])
        if px:
            ax.plot(px, py, color=color, **DRIFT_STYLE)
    _percent_axis(ax)
    ax.set_xlabel(xlabel)
    ax.set_title(f"attribution error vs {xlabel}", fontsize=10)
    _integer_ticks(ax, sweep)
    _legends(ax, _error_styles(modes))


DRIFT_LINES = (("drift.ds_over_s_median", "-o", "measured median", 1.0),
               ("drift.seed_estimate", ":x", "seed estimate (tracks the median)", 1.0),
               ("drift.ds_over_s", "--", "measured mean", 0.4))


def _drift_panel(ax: Any, sweep: dict[str, Any], variants: list[tuple[str, str]],
                 xlabel: str) -> None:
    """|ds/s| in percent: the median (which the seed's estimate tracks), the mean (faint),
    the seed's estimate, and the seed's 0.6%."""
    from matplotlib.lines import Line2D

    for v in variants:
        rows = sorted((r for r in sweep["table"] if (r["norm"], r["position"]) == v),
                      key=lambda r: _x(sweep, r))
        xs, color = [_x(sweep, r) for r in rows], COLORS.get(v, "#333")
        for path, style, _what, alpha in DRIFT_LINES:
            px, py = _positive(xs, [100 * r.get(path, math.nan) for r in rows])
            if px:
                ax.plot(px, py, style, color=color, ms=4, alpha=alpha)
    _percent_axis(ax, "|ds/s| at the ablated layer (%)", small=False)
    ax.axhline(100 * SEED_DRIFT, color="black", lw=0.8, ls="-.")
    ax.set_xlabel(xlabel)
    ax.set_title("norm drift from one ablation", fontsize=10)
    _integer_ticks(ax, sweep)
    styles = [Line2D([], [], color="black", ls=style[:-1] if style[-1] in "ox" else style,
                     marker=style[-1] if style[-1] in "ox" else None, ms=4, alpha=alpha,
                     label=what) for _path, style, what, alpha in DRIFT_LINES]
    styles.append(Line2D([], [], color="black", lw=0.8, ls="-.", label="the seed's 0.6%"))
    _legends(ax, styles)


def _layer_panel(ax: Any, sweep: dict[str, Any]) -> None:
    """The deepest model's error by the ablated channel's layer (depth sweep)."""
    deepest = max(sweep["table"], key=lambda r: r["x"])
    for m in modes_in(sweep["table"]):
        vals = deepest.get(f"{m}.ne_per_layer", [])
        px, py = _positive(list(range(len(vals))), [100 * v for v in vals])
        if px:
            ax.plot(px, py, LINES[m], ms=4, label=m, zorder=3)
    vals = deepest.get("drift.ne_drift_per_layer", [])
    px, py = _positive(list(range(len(vals))), [100 * v for v in vals])
    if px:
        ax.plot(px, py, color="black", label="frozen: norm-drift part", **DRIFT_STYLE)
    _percent_axis(ax)
    ax.set_xticks(range(len(deepest.get("frozen.ne_per_layer", []))))
    ax.set_xlabel("layer of the ablated channel")
    ax.set_title(f"layer by layer, {deepest['x']}-layer model", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_sweep(sweep: dict[str, Any]) -> bytes:
    """Left: every mode's error and the drift part against the swept quantity. Right: the
    drift |ds/s| against the seed's estimate (or, for depth, the error layer by layer in the
    deepest model)."""
    plt, fig, (ax, ax2) = _figure(width=5.6)
    variants = sorted({(r["norm"], r["position"]) for r in sweep["table"]})
    xlabel = "measured active fraction" if sweep["name"] == "sparsity" else sweep["label"]
    _error_panel(ax, sweep, variants, xlabel)
    if sweep["name"] == "depth":
        _layer_panel(ax2, sweep)
    else:
        _drift_panel(ax2, sweep, variants, xlabel)
        if sweep["name"] == "sparsity":
            for a in (ax, ax2):
                a.axvline(0.10, color="gray", ls="--", lw=0.8)
    _color_legend(fig, variants)
    if sweep.get("log_x") and sweep["name"] not in ("sparsity", "depth"):
        ax.set_xscale("log", base=2)
        ax2.set_xscale("log", base=2)
    return _png(plt, fig)


def render_plots(results: dict[str, Any]) -> dict[str, bytes]:
    """`{"compare": png, "sweep-<name>": png, ...}` for the parts present in `results`."""
    out: dict[str, bytes] = {}
    if results.get("compare"):
        out["compare"] = plot_compare(results["compare"])
    for name, sweep in (results.get("sweeps") or {}).items():
        if sweep.get("table"):
            out[f"sweep-{name}"] = plot_sweep(sweep)
    return out

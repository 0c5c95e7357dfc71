"""The language-model section's plots, drawn with matplotlib (Agg) as the report's other
plots (`bilens.report.plots`) and returned as PNG bytes:

- `lm-compare`: every mode's NE per configuration (%, log, the 5% line), the seed spread as
  error bars, and the held-out loss beside it;
- `lm-split`: the frozen error's three parts stacked per configuration (norm drift,
  attention change, gating; %, linear), frozen's own NE marked, per target;
- `lm-distance`: every mode's NE by the distance `p - t` of node and target, one panel per
  configuration;
- `lm-sweep-<name>`: a sweep's NE per mode against the swept quantity, and the split parts.

The color is the mode (in a sweep, the norm/position as in the MLP sweeps); no norm is one
network in both positions and is drawn once.
"""

from __future__ import annotations

import math
from typing import Any

from bilens.report.lm_tables import SPLIT, lm_modes_in, lm_targets_in
from bilens.report.plots import COLORS, _figure, _percent_axis, _png, _positive
from bilens.report.tables import merge_none

MODE_COLORS = {"frozen": "#d62728", "frozen-norm": "#ff7f0e", "live": "#1f77b4",
               "renorm": "#2ca02c"}
MODE_LINES = {"frozen": "-o", "frozen-norm": ":^", "live": "--s", "renorm": "-.d"}
SPLIT_COLORS = ("#9467bd", "#8c564b", "#bcbd22")
SPLIT_LINES = ("-", "--", ":")


def _labels(table: list[dict[str, Any]]) -> list[str]:
    return [f"{r['norm']}/{r['position']}" for r in table]


def _get(row: dict[str, Any], key: str) -> float:
    v = row.get(key, math.nan)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan


def _spread(row: dict[str, Any], key: str) -> float:
    """The seed sd of `row[key]` (0 with one seed: no spread is known)."""
    sd = _get(row, f"{key}_std")
    return sd if int(row.get("n_seeds", 1)) > 1 and math.isfinite(sd) else 0.0


def _ne_bars(ax: Any, table: list[dict[str, Any]], modes: list[str], target: str) -> None:
    """Grouped bars: per configuration, one bar per mode (color), NE in % with the seeds'
    sd (the lower whisker kept above 0 on the log axis)."""
    xs, width = list(range(len(table))), 0.8 / max(len(modes), 1)
    for j, mode in enumerate(modes):
        vals = [100 * _get(r, f"{mode}.ne") for r in table]
        sds = [100 * _spread(r, f"{mode}.ne") for r in table]
        shown = [v if math.isfinite(v) and v > 0 else 0.0 for v in vals]
        low = [min(s, 0.9 * v) for s, v in zip(sds, shown, strict=True)]
        ax.bar([x + (j - (len(modes) - 1) / 2) * width for x in xs], shown, width,
               yerr=[low, sds] if any(sds) else None, capsize=2,
               color=MODE_COLORS.get(mode, "#333"),
               edgecolor="black", linewidth=0.5, label=mode, error_kw={"lw": 0.8})
    _percent_axis(ax)
    ax.set_xticks(xs, _labels(table), rotation=30, ha="right")
    ax.set_title(f"attribution error per mode, target {target}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="mode",
              title_fontsize=7)


def plot_lm_compare(cmp: dict[str, Any]) -> bytes:
    """Left: NE per mode and configuration (%, log; the seeds' sd). Right: held-out loss."""
    plt, fig, (ax, ax2) = _figure(width=5.6)
    table = merge_none(cmp["table"])
    s = cmp.get("settings") or {}
    _ne_bars(ax, table, lm_modes_in(table), s.get("target", "next"))
    xs = list(range(len(table)))
    losses = [_get(r, "test_loss") for r in table]
    sds = [_spread(r, "test_loss") for r in table]
    ax2.bar(xs, losses, 0.6, yerr=sds if any(sds) else None, capsize=3,
            color=[COLORS.get((r["norm"], r["position"]), "#7f7f7f") for r in table],
            edgecolor="black", linewidth=0.5)
    finite = [v for v in losses if math.isfinite(v)]
    if finite:
        pad = max(0.05 * (max(finite) - min(finite)), 0.01)
        ax2.set_ylim(min(finite) - 3 * pad, max(finite) + 3 * pad)
    ax2.set_xticks(xs, _labels(table), rotation=30, ha="right")
    ax2.set_ylabel("held-out loss (nats)")
    seeds = s.get("seeds", 1)
    ax2.set_title("held-out loss " + ("(1 seed)" if seeds == 1 else f"({seeds} seeds, mean ± "
                                      f"sd)"), fontsize=10)
    return _png(plt, fig)


def _split_panel(ax: Any, table: list[dict[str, Any]], prefix: str, title: str) -> None:
    """The three parts stacked per configuration, frozen's NE as a black marker."""
    xs, bottom = list(range(len(table))), [0.0] * len(table)
    for (key, name), color in zip(SPLIT, SPLIT_COLORS, strict=True):
        vals = [100 * _get(r, prefix + key) for r in table]
        vals = [v if math.isfinite(v) else 0.0 for v in vals]
        ax.bar(xs, vals, 0.6, bottom=bottom, color=color, edgecolor="black", linewidth=0.5,
               label=name)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    frozen = [100 * _get(r, prefix + "frozen.ne") for r in table]
    px, py = _positive(xs, frozen)
    ax.plot(px, py, "D", color="black", ms=6, label="frozen's NE", zorder=4)
    ax.set_xticks(xs, _labels(table), rotation=30, ha="right")
    ax.set_ylabel("sum|part| / sum|actual| (%)")
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()       # top of the stack first
    ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))


def plot_lm_split(cmp: dict[str, Any]) -> bytes:
    """The frozen error's split stacked per configuration: the configured target, then each
    extra target that carries its split (the margin)."""
    table = merge_none(cmp["table"])
    target = (cmp.get("settings") or {}).get("target", "next")
    panels = [("", f"frozen's error split, target {target}")]
    panels += [(f"{t}.", f"frozen's error split, target {t}") for t in lm_targets_in(table)
               if any(math.isfinite(_get(r, f"{t}.drift.ne_attention")) for r in table)]
    plt, fig, axes = _figure(len(panels), width=5.6)
    for ax, (prefix, title) in zip(list(axes) if len(panels) > 1 else [axes], panels,
                                   strict=True):
        _split_panel(ax, table, prefix, title)
    return _png(plt, fig)


def plot_lm_distance(cmp: dict[str, Any]) -> bytes:
    """Every mode's NE by `p - t` (the node's distance from the target position), one panel
    per configuration, on one y range."""
    from matplotlib.lines import Line2D

    table = merge_none(cmp["table"])
    modes = lm_modes_in(table)
    plt, fig, axes = _figure(len(table), width=2.9)
    axes = list(axes) if len(table) > 1 else [axes]
    seen: list[float] = []
    for ax, row in zip(axes, table, strict=True):
        for m in modes:
            pairs = row.get(f"{m}.ne_by_distance") or []
            px, py = _positive([float(p[0]) for p in pairs], [100 * p[1] for p in pairs])
            if px:
                ax.plot(px, py, MODE_LINES.get(m, "-"), color=MODE_COLORS.get(m), ms=3, lw=1.1)
                seen += py
        _percent_axis(ax, "NE (%)" if ax is axes[0] else "")
        ax.set_xlabel("p - t (positions before the target)", fontsize=8)
        ax.set_title(f"{row['norm']}/{row['position']}", fontsize=10)
    if seen:
        for ax in axes:
            ax.set_ylim(min(min(seen), 100 * 0.05) / 1.5, max(seen) * 1.5)
    handles = [Line2D([], [], color=MODE_COLORS.get(m), ls=MODE_LINES[m][:-1],
                      marker=MODE_LINES[m][-1], ms=4, label=m) for m in modes if m in MODE_LINES]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles),
               title="mode", title_fontsize=8)
    return _png(plt, fig)


def _sweep_x(sweep: dict[str, Any], row: dict[str, Any]) -> float:
    if sweep.get("name") == "sparsity":
        return _get(row, "active_fraction")
    try:
        return float(row.get("x"))
    except (TypeError, ValueError):
        return math.nan


def _sweep_lines(ax: Any, sweep: dict[str, Any], keys: list[tuple[str, str]],
                 styles: list[str], xlabel: str, ylabel: str) -> None:
    """One line per (configuration: color) x (key: style) against the swept quantity."""
    from matplotlib.lines import Line2D

    variants = sorted({(r["norm"], r["position"]) for r in sweep["table"]})
    for v in variants:
        rows = sorted((r for r in sweep["table"] if (r["norm"], r["position"]) == v),
                      key=lambda r: _sweep_x(sweep, r))
        for (key, _name), style in zip(keys, styles, strict=True):
            px, py = _positive([_sweep_x(sweep, r) for r in rows],
                               [100 * _get(r, key) for r in rows])
            if px:
                ax.plot(px, py, style, color=COLORS.get(v, "#333"), ms=4)
    _percent_axis(ax, ylabel)
    ax.set_xlabel(xlabel)
    handles = [Line2D([], [], color="black", ls=s.rstrip("o^sd"), marker=s[-1] if
                      s[-1] in "o^sd" else None, ms=4, label=n)
               for (_k, n), s in zip(keys, styles, strict=True)]
    handles += [Line2D([], [], color=COLORS.get(v, "#333"), lw=3, label=f"{v[0]}/{v[1]}")
                for v in variants]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_lm_sweep(sweep: dict[str, Any]) -> bytes:
    """Left: every mode's NE against the swept quantity. Right: the frozen error's parts."""
    plt, fig, (ax, ax2) = _figure(width=5.6)
    modes = lm_modes_in(sweep["table"])
    name = sweep.get("name")
    xlabel = "measured active fraction" if name == "sparsity" else (sweep.get("label") or name)
    _sweep_lines(ax, sweep, [(f"{m}.ne", m) for m in modes],
                 [MODE_LINES.get(m, "-o") for m in modes], xlabel,
                 "normalized error vs ablation (%)")
    ax.set_title(f"attribution error vs {xlabel}", fontsize=10)
    _sweep_lines(ax2, sweep, list(SPLIT), list(SPLIT_LINES), xlabel,
                 "sum|part| / sum|actual| (%)")
    ax2.set_title("frozen's error split", fontsize=10)
    if sweep.get("log_x") and name not in ("sparsity", "depth"):
        ax.set_xscale("log", base=2)
        ax2.set_xscale("log", base=2)
    return _png(plt, fig)


def render_lm_plots(lm: dict[str, Any] | None) -> dict[str, bytes]:
    """`{"lm-compare", "lm-split", "lm-distance", "lm-sweep-<name>": png}` for the parts of
    `results["lm"]` present."""
    out: dict[str, bytes] = {}
    cmp = (lm or {}).get("compare")
    if cmp and cmp.get("table"):
        out["lm-compare"] = plot_lm_compare(cmp)
        out["lm-split"] = plot_lm_split(cmp)
        if any(r.get(f"{m}.ne_by_distance") for r in cmp["table"] for m in lm_modes_in(
                cmp["table"])):
            out["lm-distance"] = plot_lm_distance(cmp)
    for name, sweep in ((lm or {}).get("sweeps") or {}).items():
        if sweep.get("table"):
            out[f"lm-sweep-{name}"] = plot_lm_sweep(sweep)
    return out

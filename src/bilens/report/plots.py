"""The report's plots: the comparison and each sweep, drawn with matplotlib (Agg) and
returned as PNG bytes, which the HTML page embeds and the Markdown links beside it."""

from __future__ import annotations

import io
import math
from typing import Any

from bilens.experiments.claims import SEED_DRIFT
from bilens.experiments.stats import modes_in

HATCH = {"frozen": "", "live": "//", "renorm": ".."}
HATCH_NAME = {"frozen": "plain", "live": "hatched", "renorm": "dotted"}
LINES = {"frozen": "-o", "live": "--s", "renorm": "-.d"}
COLORS = {("none", "post"): "#7f7f7f", ("none", "pre"): "#bcbcbc",
          ("rms", "post"): "#1f77b4", ("rms", "pre"): "#17becf",
          ("layer", "post"): "#d62728", ("layer", "pre"): "#ff9896"}


def _figure(ncols: int = 2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.8), dpi=100)
    return plt, fig, axes


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _positive(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    keep = [(x, y) for x, y in zip(xs, ys, strict=True)
            if math.isfinite(x) and math.isfinite(y) and y > 0]
    return [k[0] for k in keep], [k[1] for k in keep]


def plot_compare(cmp: dict[str, Any]) -> bytes:
    """Left: normalized error per configuration and mode (log). Right: test accuracy."""
    plt, fig, (ax, ax2) = _figure()
    table = cmp["table"]
    labels = [f"{r['norm']}/{r['position']}" for r in table]
    xs = list(range(len(table)))
    modes = modes_in(table)
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        vals = [max(r[f"{mode}.ne"], 1e-6) if math.isfinite(r[f"{mode}.ne"]) else 0
                for r in table]
        ax.bar([x + (j - (len(modes) - 1) / 2) * width for x in xs], vals, width, label=mode,
               hatch=HATCH[mode],
               color=[COLORS.get((r["norm"], r["position"]), "#999") for r in table],
               edgecolor="black", linewidth=0.5)
    ax.set_yscale("log")
    ax.set_xticks(xs, labels, rotation=30, ha="right")
    ax.set_ylabel("normalized error vs ablation")
    ax.set_title("attribution error (" + ", ".join(
        f"{m}: {HATCH_NAME[m]}" for m in modes) + ")", fontsize=10)
    ax.axhline(0.05, color="gray", lw=0.8, ls=":")
    accs = [100 * r["test_accuracy"] for r in table]
    errs = [100 * (r.get("test_accuracy_std") or 0.0) for r in table]
    ax2.bar(xs, accs, 0.6, yerr=errs, capsize=3, edgecolor="black", linewidth=0.5,
            color=[COLORS.get((r["norm"], r["position"]), "#999") for r in table])
    finite = [a for a in accs if math.isfinite(a)]
    if finite:
        ax2.set_ylim(max(0.0, min(finite) - 3), min(100.0, max(finite) + 1.5))
    ax2.set_xticks(xs, labels, rotation=30, ha="right")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_title(f"accuracy ({cmp['settings'].get('seeds', 1)} seed(s), mean ± sd)")
    return _png(plt, fig)


def _x(sweep: dict[str, Any], row: dict[str, Any]) -> float:
    return row["active_fraction"] if sweep["name"] == "sparsity" else float(row["x"])


def plot_sweep(sweep: dict[str, Any]) -> bytes:
    """Left: frozen/live/drift error against the swept quantity. Right: the drift |ds/s|
    (or, for depth, the error layer by layer in the deepest model)."""
    plt, fig, (ax, ax2) = _figure()
    variants = sorted({(r["norm"], r["position"]) for r in sweep["table"]})
    xlabel = "measured active fraction" if sweep["name"] == "sparsity" else sweep["label"]
    for v in variants:
        rows = sorted((r for r in sweep["table"] if (r["norm"], r["position"]) == v),
                      key=lambda r: _x(sweep, r))
        xs = [_x(sweep, r) for r in rows]
        color = COLORS.get(v, "#333")
        for path, style, what in ((*((f"{m}.ne", LINES[m], m) for m in modes_in(rows)),
                                   ("drift.ne_drift", ":^", "drift part"))):
            px, py = _positive(xs, [r[path] for r in rows])
            if px:
                ax.plot(px, py, style, color=color, ms=4, label=f"{v[0]}/{v[1]} {what}")
        if sweep["name"] != "depth":
            px, py = _positive(xs, [r["drift.ds_over_s"] for r in rows])
            if px:
                ax2.plot(px, py, "-o", color=color, ms=4, label=f"{v[0]}/{v[1]} measured")
            px, py = _positive(xs, [r["drift.seed_estimate"] for r in rows])
            if px:
                ax2.plot(px, py, ":", color=color, label=f"{v[0]}/{v[1]} seed estimate")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalized error")
    ax.set_title(f"attribution error vs {xlabel}")
    ax.legend(fontsize=6.5, ncol=2 if len(variants) > 1 else 1)
    if sweep["name"] == "depth":
        deepest = max(sweep["table"], key=lambda r: r["x"])
        for path, style, what in ((*((f"{m}.ne_per_layer", LINES[m], m)
                                     for m in modes_in(sweep["table"])),
                                   ("drift.ne_drift_per_layer", ":^", "drift part"))):
            vals = deepest.get(path, [])
            px, py = _positive(list(range(len(vals))), vals)
            if px:
                ax2.plot(px, py, style, ms=4, label=what)
        ax2.set_xticks(range(len(deepest.get("frozen.ne_per_layer", []))))
        ax2.set_xlabel("layer of the ablated channel")
        ax2.set_ylabel("normalized error")
        ax2.set_title(f"layer by layer, {deepest['x']}-layer model")
    else:
        if sweep["name"] == "sparsity":
            ax2.axvline(0.10, color="gray", ls="--", lw=0.8)
            ax.axvline(0.10, color="gray", ls="--", lw=0.8)
        ax2.axhline(SEED_DRIFT, color="black", lw=0.8, ls="-.", label="seed: 0.6%")
        ax2.set_xlabel(xlabel)
        ax2.set_ylabel("mean |ds/s| at the ablated layer")
        ax2.set_title("norm drift from one ablation")
    if sweep.get("log_x") and sweep["name"] != "sparsity":
        ax.set_xscale("log", base=2)
        if sweep["name"] != "depth":
            ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.legend(fontsize=6.5)
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

"""The report's plots (matplotlib, rendered to PNG bytes) and its single-file HTML page.

The page needs no network: the PNGs are embedded as base64 `data:` URIs, the style is
inline, and a few lines of script mark the page `data-images="ok:N"` once every image has
decoded (and log a console error otherwise), so a headless browser can check it.
"""

from __future__ import annotations

import base64
import html as _html
import io
import math
from typing import Any

from bilens.report.document import claims_rows, compare_rows, modes_in, sweep_note, sweep_rows

SEED_DRIFT = 0.006
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


# ------------------------------------------------------------------------------ HTML

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;
margin:24px auto;padding:0 16px;color:#222}
h1{font-size:24px} h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:12.5px}
th,td{border:1px solid #ccc;padding:3px 7px;vertical-align:top} th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.v{font-weight:700;padding:1px 6px;border-radius:3px;white-space:nowrap}
.holds{background:#d9f2d9;color:#185c18} .partly{background:#fdf0c8;color:#7a5a00}
.fails{background:#f8d4d4;color:#8a1414} .notmeasured{background:#e8e8e8;color:#555}
pre{background:#f6f6f6;padding:8px;overflow-x:auto} img{max-width:100%;border:1px solid #eee}
.why{margin:6px 0 10px 0} .rule{color:#666;font-size:12px}
"""

CHECK = """
window.addEventListener("load", function () {
  var bad = 0, imgs = document.images;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) { bad++; }
  }
  document.body.setAttribute("data-images", bad ? "broken:" + bad : "ok:" + imgs.length);
  if (bad) { console.error("bilens report: " + bad + " image(s) failed to load"); }
});
"""


def _e(s: Any) -> str:
    return _html.escape(str(s))


def _table(header: list[str], rows: list[list[str]], verdict_col: int | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            if i == verdict_col:
                cls = c.lower().replace(" ", "")
                cells.append(f'<td><span class="v {cls}">{_e(c)}</span></td>')
            else:
                numeric = c[:1].isdigit() or c[:1] in "-+" or c == "n/a"
                cells.append(f'<td{" class=num" if numeric else ""}>{_e(c)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _img(pngs: dict[str, bytes], key: str, alt: str) -> str:
    if key not in pngs:
        return ""
    data = base64.b64encode(pngs[key]).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


def html(results: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """The whole report as one HTML page."""
    from bilens.report.document import _settings_line

    title = results.get("title", "bilens report")
    parts = [f"<h1>{_e(title)}</h1>"]
    if results.get("commands"):
        parts.append("<pre>" + _e("\n".join(results["commands"])) + "</pre>")
    rec = results.get("recommendation", {})
    parts.append("<h2>Recommendation</h2><ul>" +
                 "".join(f"<li>{_e(t)}</li>" for t in rec.get("text", [])) + "</ul>")
    cmp = results.get("compare")
    if cmp:
        parts += ["<h2>Comparison</h2>", f"<p>{_e(_settings_line(cmp['settings']))}</p>",
                  _table(*compare_rows(cmp["table"])), _img(pngs, "compare", "comparison")]
    header, rows = claims_rows(results.get("claims", []))
    parts += ["<h2>The seed's claims</h2>", _table(header, rows, verdict_col=4)]
    for i, c in enumerate(results.get("claims", [])):
        if c["why"] or c["verdict"] != "holds":
            parts.append(f'<div class="why"><b>{i + 1}. {_e(c["claim"])}:</b> '
                         f'<span class="v {c["verdict"].replace(" ", "")}">{_e(c["verdict"])}'
                         f'</span> {_e(c["why"])} <div class="rule">Rule: {_e(c["rule"])}'
                         f'</div></div>')
    for name, sweep in (results.get("sweeps") or {}).items():
        parts += [f"<h2>Sweep: {_e(name)}</h2>", f"<p>{_e(_settings_line(sweep['settings']))}</p>",
                  _table(*sweep_rows(sweep)), f"<p>{_e(sweep_note(sweep))}</p>",
                  _img(pngs, f"sweep-{name}", f"sweep {name}")]
    if results.get("timing"):
        parts.append("<h2>Timing</h2><p>" + _e(", ".join(
            f"{k}: {v:.1f} s" for k, v in results["timing"].items())) + "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><link rel=\"icon\" href=\"data:,\">"
            f"<style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + f"\n<script>{CHECK}</script>\n</body></html>\n")

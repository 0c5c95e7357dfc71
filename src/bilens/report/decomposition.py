"""Figures and an HTML section for a weight-based decomposition (matplotlib, Agg backend).

- `spectrum.png`: each layer's eigenvalues per target, from the largest positive to the
  most negative (signed; the files keep them sorted by |lambda|)
- `eigenvectors_layer{l}.png`: per target, the eigenvectors of the two largest positive and
  the two largest negative eigenvalues, projected to input space through the embedding
  (`E^T v`, with the gains and centering of any norm before `u` folded in) and drawn as
  images, red the positive part, blue the negative part (image datasets only)
- `faithfulness.png`: top-k reconstruction error per layer; for the last layer, the real
  network's target under the rank-k truncation, frozen and with every norm live
- `faithfulness_compare.png` (`plot_faithfulness_compare`): none / rms / layer side by side

`token_table(tokens)` renders a language model's token alignment (`Decomposition.tokens`)
as a Markdown table, `token_html(tokens)` as an HTML one. `decomposition_html(summary,
pngs)` returns the report's section for one configuration.

Example:
    >>> paths = write_figures(dec, Path("out"), model=model, dataset="digits")  # doctest: +SKIP
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import base64
import html as _html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from bilens.analysis.decompose import Decomposition

IMAGE_SHAPES = {"digits": (8, 8), "mnist": (28, 28), "fashion-mnist": (28, 28)}
COLORS = {("none", "post"): "#7f7f7f", ("none", "pre"): "#bcbcbc",
          ("rms", "post"): "#1f77b4", ("rms", "pre"): "#17becf",
          ("layer", "post"): "#d62728", ("layer", "pre"): "#ff9896"}
MAX_TARGET_ROWS = 10
DPI = 90


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def image_shape(dataset: str | None, d_in: int) -> tuple[int, int] | None:
    """The image shape of an image dataset's inputs (None for other data)."""
    shape = IMAGE_SHAPES.get(dataset or "")
    return shape if shape is not None and shape[0] * shape[1] == d_in else None


def plot_spectrum(dec: Decomposition) -> bytes:
    """One panel per layer: each target's eigenvalues from the largest positive to the most
    negative (sorted by value, so each line is monotone), on a symmetric-log axis."""
    plt = _plt()
    n = len(dec.layers)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 1.2, 3.2), squeeze=False)
    for ax, l in zip(axes[0], dec.layers, strict=True):
        lam = dec.eigenvalues[l].detach().cpu().double().sort(-1, descending=True).values
        rank = list(range(1, lam.shape[1] + 1))
        for t, name in enumerate(dec.targets):
            ax.plot(rank, lam[t].numpy(), lw=0.9, label=name)
        top = float(lam.abs().max()) or 1.0
        ax.set_yscale("symlog", linthresh=top * 1e-2, linscale=0.5)
        decades = [10.0 ** e for e in range(math.floor(math.log10(top * 1e-2)) + 1,
                                            math.floor(math.log10(top)) + 1)]
        ax.set_yticks([-v for v in decades[::-1]] + [0.0] + decades)   # clear of each other
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_title(f"layer {l}", fontsize=10)
        ax.set_xlabel("index (largest to most negative)")
    axes[0][0].set_ylabel("eigenvalue")
    if len(dec.targets) <= 12:
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def _columns(lam: torch.Tensor, per_sign: int = 2) -> list[int]:
    """Indices of the `per_sign` largest positive and largest negative eigenvalues."""
    pos = [i for i in range(lam.shape[0]) if lam[i] > 0][:per_sign]
    neg = [i for i in range(lam.shape[0]) if lam[i] < 0][:per_sign]
    return pos + neg


def plot_eigenvectors(dec: Decomposition, l: int, input_map: torch.Tensor,
                      shape: tuple[int, int]) -> bytes:
    """Per target (row), the top positive and negative eigenvectors of layer `l` as images."""
    plt = _plt()
    rows = list(range(min(len(dec.targets), MAX_TARGET_ROWS)))
    fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 1.5, len(rows) * 1.6), squeeze=False)
    M = input_map.double().cpu()                                            # [d_model, d_in]
    for r, t in enumerate(rows):
        lam, V = dec.eigenvalues[l][t].cpu(), dec.eigenvectors[l][t].cpu()
        cols = _columns(lam)
        for j, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(cols):
                ax.axis("off")
                continue
            img = (M.T @ V[:, cols[j]]).reshape(shape)                      # E^T v
            lim = img.abs().max().item() or 1.0
            ax.imshow(img.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"λ={lam[cols[j]].item():.3g}", fontsize=7)
        axes[r][0].set_ylabel(dec.targets[t], fontsize=7)
    fig.suptitle(f"layer {l}: top + / − eigenvectors (red +, blue −)", fontsize=9)
    return _png(fig)


def plot_faithfulness(faith: dict[str, Any]) -> bytes:
    """Left: top-k reconstruction error per layer. Right: the last layer, frozen vs live."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ks = faith["ks"]
    for l, layer in faith["layers"].items():
        ax.plot(ks, _pc(layer["recon_ne_mean"]), "-o", ms=3, label=f"layer {l}")
    _ne_axes(ax, "direct contribution missed by top-k")
    ax.legend(fontsize=7)
    last = faith.get("last_layer")
    if last:
        for name, style in (("frozen_ne", "-o"), ("live_ne", "--s"), ("gap_ne", ":^")):
            ax2.plot(ks, _pc(last[name + "_mean"]), style, ms=3, label=name.replace("_ne", ""))
        ax2.legend(fontsize=7)
    _ne_axes(ax2, f"last layer: target under rank-k truncation"
                  f"{'' if not last else ' (layer ' + str(last['layer']) + ')'}")
    return _png(fig)


def _pc(values: list[float]) -> list[float]:
    """Fractions -> percent (every error figure is in percent, as the tables)."""
    return [100 * v for v in values]


def _k_axis(ax: Any, label: str = "k (top eigencomponents kept)") -> None:
    import matplotlib.ticker

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(label)


def _ne_axes(ax: Any, title: str) -> None:
    """k on a log axis; the error in percent on a symmetric-log axis (0 at full rank)."""
    import matplotlib.ticker

    _k_axis(ax)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_ylabel("error, % of |direct contribution|")
    ax.set_title(title, fontsize=9)


def plot_faithfulness_compare(records: list[dict[str, Any]]) -> bytes:
    """None / rms / layer x pre / post side by side: each record has `norm`, `position` and
    the `faithfulness` dict (seeds are separate lines of one color)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    seen: set[tuple[str, str]] = set()
    one_none = {("none", "post"), ("none", "pre")} <= {(r["norm"], r["position"])
                                                       for r in records}
    for rec in records:
        key, faith = (rec["norm"], rec["position"]), rec["faithfulness"]
        last = faith.get("last_layer")
        if not last or (one_none and key == ("none", "pre")):   # one network: drawn once
            continue
        name = "none (post = pre)" if one_none and key[0] == "none" else f"{key[0]}/{key[1]}"
        label = None if key in seen else name
        seen.add(key)
        color = COLORS.get(key, "#999")
        axes[0].plot(faith["ks"], _pc(last["frozen_ne_mean"]), "-", color=color, lw=1,
                     label=label)
        axes[1].plot(faith["ks"], _pc(last["live_ne_mean"]), "-", color=color, lw=1,
                     label=label)
        stab = last["stability"]
        axes[2].plot(stab["ks"], stab["overlap_mean"], "-o", color=color, ms=3, lw=1,
                     label=label)
    _ne_axes(axes[0], "last layer, frozen norms: truncation error")
    _ne_axes(axes[1], "last layer, live norms: truncation error")
    _k_axis(axes[2], "k")
    axes[2].set_ylim(0, 1.02)
    axes[2].set_ylabel("top-k eigenspace overlap")
    axes[2].set_title("frozen vs live-norm eigenvectors", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    return _png(fig)


def render_figures(dec: Decomposition, model: Any = None,
                   dataset: str | None = None) -> dict[str, bytes]:
    """Every figure of one decomposition as PNG bytes, by file name."""
    pngs = {"spectrum.png": plot_spectrum(dec)}
    if model is not None:
        from bilens.analysis.direct_path import direct_path

        shape = image_shape(dataset, getattr(model.config, "d_in", 0))
        if shape is not None:
            path = direct_path(model)
            for l in dec.layers:
                pngs[f"eigenvectors_layer{l}.png"] = plot_eigenvectors(
                    dec, l, path.input_map(l), shape)
    if dec.faithfulness:
        pngs["faithfulness.png"] = plot_faithfulness(dec.faithfulness)
    return pngs


def _cell(ends: list[dict[str, Any]]) -> str:
    return " ".join(f"`{e['token']!r}` {e['score']:.2f}".replace("|", "\\|") for e in ends)


def token_table(tokens: dict[str, Any], vectors: int | None = None) -> str:
    """A Markdown table of the tokens each top eigenvector aligns with (`token_alignment`'s
    dict, `decomposition.json`'s `tokens`): per layer, target and eigenvector, its
    eigenvalue and its two ends (top tokens by `v . M E[token]`, positive and negative);
    `vectors` keeps that many eigenvectors per layer and target (all when None)."""
    lines = ["| layer | target | i | eigenvalue | top + tokens (score) | top - tokens (score) |",
             "|---|---|---|---|---|---|"]
    for l, rows in tokens["layers"].items():
        for row in rows:
            if vectors is not None and row["rank"] >= vectors:
                continue
            lines.append(f"| {l} | {row['target']} | {row['rank']} | {row['eigenvalue']:.3g} | "
                         f"{_cell(row['positive'])} | {_cell(row['negative'])} |")
    return "\n".join(lines)


def _html_ends(ends: list[dict[str, Any]]) -> str:
    return " ".join(f"<code>{_html.escape(repr(x['token']))}</code> {x['score']:.2f}"
                    for x in ends)


def token_html(tokens: dict[str, Any], vectors: int | None = None) -> str:
    """`token_table` as an HTML table (string), the tokens' text escaped."""
    e = _html.escape
    rows = "".join(
        f"<tr><td>{e(l)}</td><td>{e(r['target'])}</td><td>{r['rank']}</td>"
        f"<td>{r['eigenvalue']:.3g}</td><td>{_html_ends(r['positive'])}</td>"
        f"<td>{_html_ends(r['negative'])}</td></tr>"
        for l, rs in tokens["layers"].items() for r in rs
        if vectors is None or r["rank"] < vectors)
    return ("<table class='tokens'><tr><th>layer</th><th>target</th><th>i</th>"
            "<th>eigenvalue</th><th>top + tokens (score)</th><th>top - tokens (score)</th>"
            f"</tr>{rows}</table>")


def write_figures(dec: Decomposition, directory: str | Path, model: Any = None,
                  dataset: str | None = None) -> list[Path]:
    """Write `render_figures` into `directory`; the paths written."""
    out = []
    for name, png in render_figures(dec, model, dataset).items():
        (Path(directory) / name).write_bytes(png)
        out.append(Path(directory) / name)
    return out


def _fmt(x: float) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _at(faith: dict[str, Any], values: list[float], k: int) -> float | None:
    return values[faith["ks"].index(k)] if k in faith["ks"] else None


def decomposition_html(summary: dict[str, Any], pngs: dict[str, bytes],
                       title: str = "Weight-based decomposition") -> str:
    """An HTML section (string) for one decomposition: its faithfulness tables and figures
    embedded as `data:` URIs. `summary` is `Decomposition.summary()` (or the JSON file)."""
    e = _html.escape
    faith = summary.get("faithfulness") or {}
    parts = [f"<section class='decomposition'><h2>{e(title)}</h2>",
             f"<p>Targets: {e(', '.join(t['spec'] for t in summary['targets']))}; layers "
             f"{e(str(summary['layers']))}; eigenvectors of <code>Q = sym(L^T diag(D^T w) R)"
             f"</code> with the norms folded into <code>w</code> (docs/spec.md §10).</p>"]
    if faith:
        ks = [k for k in (1, 4, 16) if k in faith["ks"]]
        head = "".join(f"<th>missed, k={k}</th>" for k in ks)
        rows = "".join(
            f"<tr><td>{e(l)}</td>"
            + "".join(f"<td>{_fmt(_at(faith, v['recon_ne_mean'], k))}</td>" for k in ks)
            + f"<td>{_fmt(v['direct_share_mean'])}</td></tr>"
            for l, v in faith["layers"].items())
        parts.append(f"<table><tr><th>layer</th>{head}<th>direct share</th></tr>{rows}</table>")
        last = faith.get("last_layer")
        if last:
            stab = last["stability"]
            cells = "".join(
                f"<tr><td>{k}</td><td>{_fmt(_at(faith, last['frozen_ne_mean'], k))}</td>"
                f"<td>{_fmt(_at(faith, last['live_ne_mean'], k))}</td>"
                f"<td>{_fmt(_at(faith, last['gap_ne_mean'], k))}</td>"
                f"<td>{_overlap(stab, k)}</td></tr>" for k in ks)
            parts.append(f"<p>Last layer ({last['layer']}), on {faith['n_inputs']} inputs: the "
                         f"target under the rank-k truncation, frozen and live.</p><table><tr>"
                         f"<th>k</th><th>frozen</th><th>live</th><th>gap</th><th>overlap</th>"
                         f"</tr>{cells}</table>")
    for name, png in pngs.items():
        data = base64.b64encode(png).decode()
        parts.append(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(name)}</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def _overlap(stab: dict[str, Any], k: int) -> str:
    return f"{stab['overlap_mean'][stab['ks'].index(k)]:.3f}" if k in stab["ks"] else "n/a"

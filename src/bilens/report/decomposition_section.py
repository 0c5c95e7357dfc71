"""The report's weight-based decomposition: one section per compared configuration, drawn
from the plain data of `bilens.experiments.decompose_models` (no model needed).

Per configuration (`results["decomposition"]["sections"]`, the first seed; no norm once):
the faithfulness tables, `spectrum` (each layer's eigenvalues per class), `eigenvectors`
(the first layer's top positive and negative eigenvectors per class, projected to input
space and drawn as images) and `faithfulness` (top-k reconstruction per layer; the last
layer's rank-k truncation, frozen and live). Beside them, `decomposition-compare`: every
configuration's last-layer curves side by side (`plot_faithfulness_compare`).

A transformer comparison's decomposition (`results["lm"]["decomposition"]`, sections of
kind `transformer`, drawn inside the language-model section by `report.lm_section`) is
drawn the same way under its own heading, its image keys prefixed
`decomposition-lm-`, with the tokens each layer's top eigenvectors align with as a table
(`token_table`, `token_html`) where the MLP's have eigenvector images.

Example:
    >>> pngs = render(results["decomposition"])                       # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html as _html
from types import SimpleNamespace
from typing import Any

from bilens.report.decomposition import (
    _plt,
    _png,
    decomposition_html,
    plot_faithfulness,
    plot_faithfulness_compare,
    plot_spectrum,
    token_html,
    token_table,
)

COMPARE_KEY = "decomposition-compare"
FIGURES = ("spectrum", "eigenvectors", "faithfulness")
KS = (1, 4, 16)


def _lm(decomposition_or_section: dict[str, Any]) -> bool:
    d = decomposition_or_section
    return (d.get("kind") or (d.get("settings") or {}).get("kind")) == "transformer"


def _config(sec: dict[str, Any]) -> str:
    config = "none" if sec["norm"] == "none" else f"{sec['norm']}-{sec['position']}"
    return f"lm-{config}" if _lm(sec) else config


def compare_key(decomposition: dict[str, Any]) -> str:
    """The image key of the side-by-side figure (`decomposition-lm-compare` for LMs)."""
    return "decomposition-lm-compare" if _lm(decomposition) else COMPARE_KEY


def title(sec: dict[str, Any]) -> str:
    """The section's heading: its configuration and seed."""
    where = ("none (post = pre: one network)" if sec["norm"] == "none"
             else f"{sec['norm']}/{sec['position']}")
    return f"{'LM decomposition' if _lm(sec) else 'Decomposition'}: {where}, seed {sec['seed']}"


def plot_images(images: dict[str, Any]) -> bytes:
    """Per class (row), the top positive and negative eigenvectors as images, red positive
    and blue negative, each on its own symmetric color scale."""
    import numpy as np

    plt = _plt()
    rows, h_w = images["targets"], images["shape"]
    ncol = max(len(r["images"]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(ncol * 1.5, len(rows) * 1.5),
                             squeeze=False)
    for r, row in enumerate(rows):
        for j, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row["images"]):
                ax.axis("off")
                continue
            img = np.asarray(row["images"][j]).reshape(h_w)
            lim = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"λ={row['eigenvalues'][j]:.3g}", fontsize=7)
        axes[r][0].set_ylabel(row["target"], fontsize=7)
    fig.suptitle(f"layer {images['layer']}: top + / − eigenvectors through the embedding "
                 f"(red +, blue −)", fontsize=9)
    return _png(fig)


def section_pngs(sec: dict[str, Any]) -> dict[str, bytes]:
    """One configuration's figures, by name (`FIGURES`)."""
    import torch

    layers = sorted(int(k) for k in sec["spectrum"])
    spectrum = SimpleNamespace(layers=layers,
                               targets=[t["spec"] for t in sec["summary"]["targets"]],
                               eigenvalues={l: torch.tensor(sec["spectrum"][str(l)])
                                            for l in layers})
    out = {"spectrum": plot_spectrum(spectrum)}
    if sec.get("images"):
        out["eigenvectors"] = plot_images(sec["images"])
    if sec["summary"].get("faithfulness"):
        out["faithfulness"] = plot_faithfulness(sec["summary"]["faithfulness"])
    return out


def key(sec: dict[str, Any], figure: str) -> str:
    """The report's image key of one section's figure."""
    return f"decomposition-{_config(sec)}-{figure}"


def render(decomposition: dict[str, Any] | None) -> dict[str, bytes]:
    """Every decomposition figure of the report, by image key."""
    if not decomposition or not decomposition.get("sections"):
        return {}
    out = {compare_key(decomposition):
           plot_faithfulness_compare(decomposition.get("records", []))}
    for sec in decomposition["sections"]:
        out.update({key(sec, name): png for name, png in section_pngs(sec).items()})
    return out


def intro(decomposition: dict[str, Any]) -> str:
    """What the sections show and how they were measured (one paragraph)."""
    s = decomposition.get("settings", {})
    if _lm(decomposition):
        return (f"Every layer of every compared transformer ({s.get('dataset')}) decomposed "
                f"per position for {', '.join(map(str, s.get('targets') or []))} "
                f"({s.get('target_rule', 'given')}): the read-out direction with the norms on "
                f"the direct path folded in, its interaction matrix Q = sym(L^T diag(D^T w) R) "
                f"and its eigenvectors (docs/decomposition.md). Faithfulness on "
                f"{s.get('n_sequences')} held-out sequences of {s.get('seq_len')} tokens, "
                f"every position one input ({s.get('n_inputs')} inputs), the live-norm "
                f"eigenvectors on {s.get('stability_n')} positions. Errors are percentages of "
                f"the layer's direct contribution; attention is off the direct path. One "
                f"section per configuration (its first seed; no norm once); claim 11 above "
                f"judges all seeds. The tables list, for each layer's top "
                f"{s.get('token_vectors', 2)} eigenvectors, the tokens whose embedding aligns "
                f"most with each end (v . M E[token]).")
    return (f"Every layer of every compared model decomposed for every class (the read-out "
            f"direction with the norms folded in, its interaction matrix Q = sym(L^T diag(D^T "
            f"w) R) and its eigenvectors; docs/decomposition.md), faithfulness measured on "
            f"{s.get('n_inputs')} test inputs, the live-norm eigenvectors on "
            f"{s.get('stability_n')}. Errors are percentages of the layer's direct "
            f"contribution. One section per configuration (its first seed; no norm once, "
            f"being one network in both positions); claim 11 above judges all seeds. The "
            f"eigenvector images are layer {s.get('image_layer', 0)}'s, whose input is the "
            f"embedding's.")


def heading(decomposition: dict[str, Any]) -> str:
    """The decomposition's top heading."""
    if _lm(decomposition):
        dataset = (decomposition.get("settings") or {}).get("dataset")
        return f"Weight-based decomposition: language models ({dataset})"
    return "Weight-based decomposition"


def html_sections(decomposition: dict[str, Any] | None, pngs: dict[str, bytes]) -> list[str]:
    """The HTML of every section (strings)."""
    if not decomposition or not decomposition.get("sections"):
        return []
    parts = [f"<h2>{_html.escape(heading(decomposition))}</h2>",
             f"<p>{_html.escape(intro(decomposition))}</p>"]
    ckey = compare_key(decomposition)
    if ckey in pngs:
        data = base64.b64encode(pngs[ckey]).decode("ascii")
        parts.append(f'<p><img alt="decomposition: every configuration side by side" '
                     f'src="data:image/png;base64,{data}"></p>')
    for sec in decomposition["sections"]:
        figs = {f"{name}.png": pngs[key(sec, name)] for name in FIGURES
                if key(sec, name) in pngs}
        part = (decomposition_html(sec["summary"], figs, title=title(sec))
                .replace("<h2>", "<h3>").replace("</h2>", "</h3>"))
        if sec.get("tokens"):
            table = ("<p>The tokens each top eigenvector aligns with (its two ends; an "
                     "eigenvector's sign is arbitrary):</p>" + token_html(sec["tokens"]))
            part = part.replace("</section>", table + "\n</section>")
        parts.append(part)
    return parts


def _cell(values: list[float] | None, ks: list[int], k: int) -> str:
    return "n/a" if values is None or k not in ks else f"{100 * values[ks.index(k)]:.1f}%"


def markdown_sections(decomposition: dict[str, Any] | None, images: dict[str, str]) -> list[str]:
    """The Markdown lines of every section; `images` maps image keys to file names."""
    if not decomposition or not decomposition.get("sections"):
        return []
    lines = [f"## {heading(decomposition)}", "", intro(decomposition), ""]
    ckey = compare_key(decomposition)
    if ckey in images:
        lines += [f"![decomposition: every configuration]({images[ckey]})", ""]
    for sec in decomposition["sections"]:
        faith = sec["summary"].get("faithfulness") or {}
        lines += [f"### {title(sec)}", ""]
        if faith:
            ks = faith["ks"]
            lines += ["| layer | " + " | ".join(f"missed, k={k}" for k in KS) + " | direct share |",
                      "|" + " --- |" * (len(KS) + 2)]
            lines += [f"| {l} | " + " | ".join(_cell(v["recon_ne_mean"], ks, k) for k in KS)
                      + f" | {100 * v['direct_share_mean']:.1f}% |"
                      for l, v in faith["layers"].items()]
            last = faith.get("last_layer")
            if last:
                stab = last["stability"]
                lines += ["", f"Last layer ({last['layer']}): the target under the rank-k "
                              f"truncation, frozen and with every norm live.", "",
                          "| k | frozen | live | gap | overlap |",
                          "| --- | --- | --- | --- | --- |"]
                lines += [f"| {k} | {_cell(last['frozen_ne_mean'], ks, k)} | "
                          f"{_cell(last['live_ne_mean'], ks, k)} | "
                          f"{_cell(last['gap_ne_mean'], ks, k)} | "
                          + (f"{stab['overlap_mean'][stab['ks'].index(k)]:.3f}"
                             if k in stab["ks"] else "n/a") + " |" for k in KS]
            lines.append("")
        if sec.get("tokens"):
            lines += ["The tokens each top eigenvector aligns with (its two ends; an "
                      "eigenvector's sign is arbitrary):", "", token_table(sec["tokens"]), ""]
        for name in FIGURES:
            if key(sec, name) in images:
                lines += [f"![{title(sec)}: {name}]({images[key(sec, name)]})", ""]
    return lines

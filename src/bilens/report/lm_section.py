"""The report's language-model section, beside the MLP one, in HTML and Markdown, drawn
from `results["lm"]` (every part optional):

    {"compare": compare_lm(...).to_dict(), "sweeps": {name: SweepResult.to_dict()},
     "claims": [{"id", "claim", "seed", "verdict", "measured", "rule", "why"}],
     "recommendation": {"text": [str], ...}, "decomposition": decompose_compared(...)}

and the recommendation across both families, `results["combined"]["text"]`. What was
compared and how (`lm_notes`), the tables (`lm_tables`), the plots (`lm_plots`), the claims
and the recommendation; the decomposition as the MLP's (`decomposition_section`), its image
keys prefixed `lm-`. A results dict with no MLP part (`bilens compare --kind transformer`)
shows the LM section alone (`show_mlp`).

Example:
    >>> show_mlp({"lm": {"compare": {}}, "claims": [], "recommendation": {"text": []}})
    False
"""

from __future__ import annotations

from typing import Any

from bilens.report import decomposition_section as dec
from bilens.report.html_parts import esc, html_img, html_table
from bilens.report.lm_notes import (
    SPLIT_NOTE,
    lm_intro,
    lm_sweep_note,
    lm_sweep_settings,
    mode_lines,
)
from bilens.report.lm_plots import render_lm_plots
from bilens.report.lm_tables import lm_compare_rows, lm_split_rows, lm_sweep_rows
from bilens.report.tables import NONE_NOTE, claims_rows, markdown_table, merge_none

TITLE = "Language models: the seed's comparison"
PREFIX = "lm-"                       # the LM decomposition's image keys
CLAIMS_NOTE = ("Each verdict is computed from the numbers above (bilens.experiments.lm_claims), "
               "by the rule printed after it.")
DISTANCE_NOTE = ("Every mode's NE over the nodes t positions before the target position p "
                 "(p - t = 0: the nodes at p, the only ones the last layer has); nodes before "
                 "p reach the target only through attention.")
COMBINED = "Recommendation: MLPs and language models"


def show_mlp(results: dict[str, Any]) -> bool:
    """Whether the MLP section is drawn: always, unless the results hold language models and
    no MLP comparison, sweep or decomposition (then it would say "not measured" throughout)."""
    mlp = results.get("compare") or results.get("sweeps") or results.get("decomposition")
    return bool(mlp) or not results.get("lm")


def _claims(lm: dict[str, Any]) -> list[dict[str, str]]:
    """The LM claims with every field a string (a missing one empty, verdict "not measured")."""
    return [{k: str(c.get(k) or "") for k in ("id", "claim", "seed", "measured", "rule", "why")}
            | {"verdict": str(c.get("verdict") or "not measured")}
            for c in lm.get("claims") or []]


def _decomposition(lm: dict[str, Any]) -> dict[str, Any] | None:
    """The LM decomposition when it has the MLP one's shape (sections to draw), else None."""
    d = lm.get("decomposition")
    ok = d and d.get("sections") and all("spectrum" in s and "summary" in s
                                          for s in d["sections"])
    return d if ok else None


def render(results: dict[str, Any]) -> dict[str, bytes]:
    """Every PNG of the LM section, by image key."""
    lm = results.get("lm") or {}
    out = render_lm_plots(lm)
    out.update({PREFIX + k: v for k, v in dec.render(_decomposition(lm)).items()})
    return out


def _unprefixed(items: dict[str, Any]) -> dict[str, Any]:
    return {k[len(PREFIX):]: v for k, v in items.items() if k.startswith(PREFIX)}


# --------------------------------------------------------------------------------- HTML


def _compare_html(cmp: dict[str, Any], pngs: dict[str, bytes]) -> list[str]:
    table = cmp.get("table") or []
    parts = ["<h3>What was compared</h3>", *(f"<p>{esc(p)}</p>" for p in lm_intro(cmp)),
             "<ul>" + "".join(f"<li><b>{esc(m)}</b>: {esc(w)}</li>" for m, w in
                              mode_lines(table)) + "</ul>"]
    if not table:
        return parts
    parts += ["<h3>The comparison</h3>", html_table(*lm_compare_rows(table))]
    if len(merge_none(table)) < len(table):
        parts.append(f"<p>{esc(NONE_NOTE)}</p>")
    parts += [html_img(pngs, "lm-compare", "language models: error per mode"),
              "<h3>Where the frozen error comes from</h3>", f"<p>{esc(SPLIT_NOTE)}</p>",
              html_table(*lm_split_rows(table)),
              html_img(pngs, "lm-split", "language models: the frozen error split")]
    if "lm-distance" in pngs:
        parts += ["<h3>Error by distance from the target</h3>", f"<p>{esc(DISTANCE_NOTE)}</p>",
                  html_img(pngs, "lm-distance", "language models: error by distance")]
    return parts


def _claims_html(claims: list[dict[str, str]]) -> list[str]:
    header, rows = claims_rows(claims)
    parts = ["<h3>The seed's claims, on language models</h3>", f"<p>{esc(CLAIMS_NOTE)}</p>",
             html_table(header, rows, verdict_col=4)]
    for i, c in enumerate(claims):
        parts.append(f'<div class="why"><b>{i + 1}. {esc(c["claim"])}:</b> '
                     f'<span class="v {esc(c["verdict"].replace(" ", ""))}">'
                     f'{esc(c["verdict"])}</span> {esc(c["why"])} <div class="rule">Rule: '
                     f'{esc(c["rule"])}</div></div>')
    return parts


def _demote(part: str) -> str:
    """A decomposition part one heading level down (h2 -> h3, h3 -> h4)."""
    for level in (3, 2):
        part = part.replace(f"<h{level}>", f"<h{level + 1}>").replace(f"</h{level}>",
                                                                        f"</h{level + 1}>")
    return part


def _list_html(heading: str, lines: list[str]) -> list[str]:
    return [heading, "<ul>" + "".join(f"<li>{esc(t)}</li>" for t in lines) + "</ul>"]


def lm_html(results: dict[str, Any], pngs: dict[str, bytes]) -> list[str]:
    """The LM section's HTML (strings), or nothing without `results["lm"]`."""
    lm = results.get("lm")
    if not lm:
        return []
    parts = ['<section id="lm">', f"<h2>{esc(TITLE)}</h2>"]
    if lm.get("compare"):
        parts += _compare_html(lm["compare"], pngs)
    if (lm.get("recommendation") or {}).get("text"):
        parts += _list_html("<h3>Recommendation for language models</h3>",
                            lm["recommendation"]["text"])
    if _claims(lm):
        parts += _claims_html(_claims(lm))
    for name, sweep in (lm.get("sweeps") or {}).items():
        parts += [f"<h3>Sweep: {esc(name)}</h3>", f"<p>{esc(lm_sweep_settings(sweep))}</p>",
                  html_table(*lm_sweep_rows(sweep)), f"<p>{esc(lm_sweep_note(sweep))}</p>",
                  html_img(pngs, f"lm-sweep-{name}", f"language-model sweep {name}")]
    d = _decomposition(lm)
    parts += [_demote(p) for p in dec.html_sections(d, _unprefixed(pngs))]
    return [*parts, "</section>"]


def combined_html(results: dict[str, Any]) -> list[str]:
    """The recommendation across both families, when there is one."""
    text = (results.get("combined") or {}).get("text")
    return _list_html(f"<h2>{esc(COMBINED)}</h2>", text) if text else []


# ----------------------------------------------------------------------------- Markdown


def _image(images: dict[str, str], key: str, alt: str) -> list[str]:
    return [f"![{alt}]({images[key]})", ""] if key in images else []


def _compare_markdown(cmp: dict[str, Any], images: dict[str, str]) -> list[str]:
    table = cmp.get("table") or []
    lines = ["### What was compared", ""]
    for p in lm_intro(cmp):
        lines += [p, ""]
    lines += [f"- **{m}**: {w}" for m, w in mode_lines(table)] + [""]
    if not table:
        return lines
    lines += ["### The comparison", "", markdown_table(*lm_compare_rows(table)), ""]
    if len(merge_none(table)) < len(table):
        lines += [NONE_NOTE, ""]
    lines += _image(images, "lm-compare", "language models: error per mode")
    lines += ["### Where the frozen error comes from", "", SPLIT_NOTE, "",
              markdown_table(*lm_split_rows(table)), ""]
    lines += _image(images, "lm-split", "language models: the frozen error split")
    if "lm-distance" in images:
        lines += ["### Error by distance from the target", "", DISTANCE_NOTE, "",
                  *_image(images, "lm-distance", "language models: error by distance")]
    return lines


def _claims_markdown(claims: list[dict[str, str]]) -> list[str]:
    lines = ["### The seed's claims, on language models", "", CLAIMS_NOTE, "",
             markdown_table(*claims_rows(claims)), ""]
    for i, c in enumerate(claims):
        why = f" {c['why']}" if c["why"] else ""
        lines += [f"**{i + 1}. {c['claim']}: {c['verdict']}.**{why} _Rule: {c['rule']}._", ""]
    return lines


def lm_markdown(results: dict[str, Any], images: dict[str, str]) -> list[str]:
    """The LM section's Markdown lines, or nothing without `results["lm"]`; `images` maps
    image keys to file names."""
    lm = results.get("lm")
    if not lm:
        return []
    lines = [f"## {TITLE}", ""]
    if lm.get("compare"):
        lines += _compare_markdown(lm["compare"], images)
    rec = (lm.get("recommendation") or {}).get("text")
    if rec:
        lines += ["### Recommendation for language models", "", *[f"- {t}" for t in rec], ""]
    if _claims(lm):
        lines += _claims_markdown(_claims(lm))
    for name, sweep in (lm.get("sweeps") or {}).items():
        lines += [f"### Sweep: {name}", "", lm_sweep_settings(sweep), "",
                  markdown_table(*lm_sweep_rows(sweep)), "", lm_sweep_note(sweep), "",
                  *_image(images, f"lm-sweep-{name}", f"language-model sweep {name}")]
    lines += ["#" + line if line.startswith("##") else line
              for line in dec.markdown_sections(_decomposition(lm), _unprefixed(images))]
    return lines


def combined_markdown(results: dict[str, Any]) -> list[str]:
    """The recommendation across both families as Markdown lines, when there is one."""
    text = (results.get("combined") or {}).get("text")
    return [f"## {COMBINED}", "", *[f"- {t}" for t in text], ""] if text else []

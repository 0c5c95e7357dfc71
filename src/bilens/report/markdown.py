"""The report as Markdown (`report.md`), its PNGs beside it."""

from __future__ import annotations

from typing import Any

from bilens.report.decomposition_section import RESULT_KEYS, markdown_sections
from bilens.report.notes import CLAIMS_NOTE, settings_line, sweep_note
from bilens.report.tables import (
    NONE_NOTE,
    claims_rows,
    compare_rows,
    markdown_table,
    merge_none,
    sweep_rows,
)


def claim_paragraphs(claims: list[dict[str, Any]]) -> list[str]:
    """Every claim's verdict, why, and the rule that decided it (Markdown lines)."""
    lines = []
    for i, c in enumerate(claims):
        why = f" {c['why']}" if c["why"] else ""
        lines += [f"**{i + 1}. {c['claim']}: {c['verdict']}.**{why} _Rule: {c['rule']}._", ""]
    return lines


def markdown(results: dict[str, Any], images: dict[str, str]) -> str:
    """The report as Markdown; `images` maps a section key to its PNG file name."""
    lines = [f"# {results.get('title', 'bilens report')}", ""]
    if results.get("commands"):
        lines += ["```", *results["commands"], "```", ""]
    cmp = results.get("compare")
    if cmp:
        s = cmp["settings"]
        lines += ["## Comparison", "", settings_line(s), "",
                  markdown_table(*compare_rows(cmp["table"])), ""]
        if len(merge_none(cmp["table"])) < len(cmp["table"]):
            lines += [NONE_NOTE, ""]
        if "compare" in images:
            lines += [f"![comparison]({images['compare']})", ""]
    lines += ["## The seed's claims", "", CLAIMS_NOTE, "",
              markdown_table(*claims_rows(results["claims"])), ""]
    lines += claim_paragraphs(results["claims"])
    lines += ["## Recommendation", "", *[f"- {t}" for t in results["recommendation"]["text"]],
              ""]
    for name, sweep in (results.get("sweeps") or {}).items():
        lines += [f"## Sweep: {name}", "", settings_line(sweep["settings"]), "",
                  markdown_table(*sweep_rows(sweep)), "", sweep_note(sweep), ""]
        if f"sweep-{name}" in images:
            lines += [f"![sweep {name}]({images[f'sweep-{name}']})", ""]
    for k in RESULT_KEYS:
        lines += markdown_sections(results.get(k), images)
    if results.get("timing"):
        lines += ["## Timing", "", ", ".join(f"{k}: {v:.1f} s" for k, v in
                                              results["timing"].items()), ""]
    return "\n".join(lines)

"""The report as Markdown (`report.md`), its PNGs beside it."""

from __future__ import annotations

from typing import Any

from bilens.report.notes import settings_line, sweep_note
from bilens.report.tables import claims_rows, compare_rows, markdown_table, sweep_rows


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
        if "compare" in images:
            lines += [f"![comparison]({images['compare']})", ""]
    lines += ["## The seed's claims", "", markdown_table(*claims_rows(results["claims"])), ""]
    for i, c in enumerate(results["claims"]):
        if c["why"] or c["verdict"] != "holds":
            lines += [f"**{i + 1}. {c['claim']}: {c['verdict']}.** {c['why']} "
                      f"_Rule: {c['rule']}._", ""]
    lines += ["## Recommendation", "", *[f"- {t}" for t in results["recommendation"]["text"]],
              ""]
    for name, sweep in (results.get("sweeps") or {}).items():
        lines += [f"## Sweep: {name}", "", settings_line(sweep["settings"]), "",
                  markdown_table(*sweep_rows(sweep)), "", sweep_note(sweep), ""]
        if f"sweep-{name}" in images:
            lines += [f"![sweep {name}]({images[f'sweep-{name}']})", ""]
    if results.get("timing"):
        lines += ["## Timing", "", ", ".join(f"{k}: {v:.1f} s" for k, v in
                                              results["timing"].items()), ""]
    return "\n".join(lines)

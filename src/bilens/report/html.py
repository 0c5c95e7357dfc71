"""The report as one self-contained HTML page.

The page needs no network: the PNGs are embedded as base64 `data:` URIs, the style is
inline, and a few lines of script mark the page `data-images="ok:N"` once every image has
decoded (and log a console error otherwise), so a headless browser can check it.
"""

from __future__ import annotations

import base64
import html as _html
from typing import Any

from bilens.report.decomposition_section import RESULT_KEYS, html_sections
from bilens.report.notes import CLAIMS_NOTE, settings_line, sweep_note
from bilens.report.tables import NONE_NOTE, claims_rows, compare_rows, merge_none, sweep_rows

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
    title = results.get("title", "bilens report")
    parts = [f"<h1>{_e(title)}</h1>"]
    if results.get("commands"):
        parts.append("<pre>" + _e("\n".join(results["commands"])) + "</pre>")
    rec = results.get("recommendation", {})
    parts.append("<h2>Recommendation</h2><ul>" +
                 "".join(f"<li>{_e(t)}</li>" for t in rec.get("text", [])) + "</ul>")
    cmp = results.get("compare")
    if cmp:
        parts += ["<h2>Comparison</h2>", f"<p>{_e(settings_line(cmp['settings']))}</p>",
                  _table(*compare_rows(cmp["table"]))]
        if len(merge_none(cmp["table"])) < len(cmp["table"]):
            parts.append(f"<p>{_e(NONE_NOTE)}</p>")
        parts.append(_img(pngs, "compare", "comparison"))
    header, rows = claims_rows(results.get("claims", []))
    parts += ["<h2>The seed's claims</h2>", f"<p>{_e(CLAIMS_NOTE)}</p>",
              _table(header, rows, verdict_col=4)]
    for i, c in enumerate(results.get("claims", [])):
        parts.append(f'<div class="why"><b>{i + 1}. {_e(c["claim"])}:</b> '
                     f'<span class="v {c["verdict"].replace(" ", "")}">{_e(c["verdict"])}'
                     f'</span> {_e(c["why"])} <div class="rule">Rule: {_e(c["rule"])}'
                     f'</div></div>')
    for name, sweep in (results.get("sweeps") or {}).items():
        parts += [f"<h2>Sweep: {_e(name)}</h2>", f"<p>{_e(settings_line(sweep['settings']))}</p>",
                  _table(*sweep_rows(sweep)), f"<p>{_e(sweep_note(sweep))}</p>",
                  _img(pngs, f"sweep-{name}", f"sweep {name}")]
    for k in RESULT_KEYS:
        parts += html_sections(results.get(k), pngs)
    if results.get("timing"):
        parts.append("<h2>Timing</h2><p>" + _e(", ".join(
            f"{k}: {v:.1f} s" for k, v in results["timing"].items())) + "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><link rel=\"icon\" href=\"data:,\">"
            f"<style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + f"\n<script>{CHECK}</script>\n</body></html>\n")

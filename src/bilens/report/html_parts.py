"""The pieces every HTML section of the report is made of: escaped text, a table whose
number cells align right (and whose verdict column is coloured), and an embedded PNG."""

from __future__ import annotations

import base64
import html as _html
from typing import Any


def esc(s: Any) -> str:
    """`s` as HTML text."""
    return _html.escape(str(s))


def html_table(header: list[str], rows: list[list[str]], verdict_col: int | None = None) -> str:
    """A table; the cells of `verdict_col` get the verdict's class (`holds`, `fails`, ...)."""
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            if i == verdict_col:
                cls = c.lower().replace(" ", "")
                cells.append(f'<td><span class="v {cls}">{esc(c)}</span></td>')
            else:
                numeric = c[:1].isdigit() or c[:1] in "-+" or c == "n/a"
                cells.append(f'<td{" class=num" if numeric else ""}>{esc(c)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def html_img(pngs: dict[str, bytes], key: str, alt: str) -> str:
    """`pngs[key]` as an `<img>` with a `data:` URI, or nothing when it was not drawn."""
    if key not in pngs:
        return ""
    data = base64.b64encode(pngs[key]).decode("ascii")
    return f'<p><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></p>'

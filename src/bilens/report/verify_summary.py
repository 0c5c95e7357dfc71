"""`summary.md` of a `bilens verify` directory: what was run, the metrics table, the plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bilens.report.tables import metrics_table


def summary_markdown(metrics: dict[str, Any], images: Sequence[str],
                     command: str | None = None) -> str:
    """A short Markdown report: the command, the model, the table, the plots (file names)."""
    info = metrics.get("info", {})
    cfg = info.get("model", {})
    lines = ["# bilens verify", ""]
    if command:
        lines += ["```", command, "```", ""]
    if cfg:
        lines += [f"Model: {cfg['n_layers']} layers, d_model {cfg['d_model']}, d_hidden "
                  f"{cfg['d_hidden']}, norm {cfg['norm']} ({cfg['norm_position']}).", ""]
    lines += ["```", metrics_table(metrics), "```", ""]
    lines += [f"![{Path(name).stem}]({name})" for name in images]
    return "\n".join(lines) + "\n"

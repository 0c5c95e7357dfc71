"""Layer 4: every rendering. Result objects (`VerifyResult`, `CompareResult`, `SweepResult`,
the experiment's results dict) are data; this package turns them into text, Markdown,
HTML and PNGs:

- `tables`: the rows of every table and their text and Markdown forms, the verify metrics
- `notes`: the report's sentences (settings, what a sweep shows)
- `markdown`, `html`, `plots`: the experiment report's three parts (`html_parts`: its pieces)
- `lm_tables`, `lm_notes`, `lm_plots`, `lm_section`: the language models' tables (also for
  the terminal: `lm_compare_text`, `lm_sweep_text`), sentences, plots and report section
- `verify_plots`, `verify_summary`: a `bilens verify` directory's PNGs and summary.md
- `files`: writing either directory atomically

Example:
    >>> from bilens import report
    >>> print(report.verify_table(result))                  # doctest: +SKIP
    >>> print(report.lm_compare_text(compare_lm().table))   # doctest: +SKIP
    >>> report.save_verify(result, "out/verify")            # doctest: +SKIP
    >>> report.write(results, "runs/demo")["html"]          # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bilens.report.files import check_outdir, command_line, save_verify, write
from bilens.report.lm_tables import (
    lm_compare_rows,
    lm_compare_text,
    lm_split_rows,
    lm_sweep_rows,
    lm_sweep_text,
)
from bilens.report.notes import settings_line, sweep_note
from bilens.report.tables import (
    claims_rows,
    claims_text,
    compare_rows,
    compare_text,
    markdown_table,
    metrics_table,
    sweep_rows,
    sweep_text,
    text_table,
    verify_table,
)
from bilens.report.verify_summary import summary_markdown

if TYPE_CHECKING:
    from bilens.analysis.verify import VerifyResult


def plot_verify(result: VerifyResult, outdir: str | os.PathLike) -> list[Path]:
    """Write a `VerifyResult`'s PNGs into `outdir`; see `bilens.report.verify_plots`
    (imported on first use: matplotlib is slow to import)."""
    if result.metrics.get("kind") == "sequence":
        from bilens.report.verify_sequence_plots import plot_sequence

        return plot_sequence(result, outdir)
    from bilens.report.verify_plots import plot_verify as plot

    return plot(result, outdir)


__all__ = [
    "check_outdir", "claims_rows", "claims_text", "command_line", "compare_rows",
    "compare_text", "lm_compare_rows", "lm_compare_text", "lm_split_rows", "lm_sweep_rows",
    "lm_sweep_text", "markdown_table", "metrics_table", "plot_verify", "save_verify",
    "settings_line", "summary_markdown", "sweep_note", "sweep_rows", "sweep_text",
    "text_table", "verify_table", "write",
]

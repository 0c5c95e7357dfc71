"""What the report layer writes to disk, each into one directory that appears whole or not
at all (a temporary directory beside it, renamed into place; Ctrl-C leaves the previous
one): the experiment report (`write`) and a `bilens verify` result (`save_verify`).

Example:
    >>> import bilens
    >>> from bilens.experiments.summary import build
    >>> paths = write(build(results), "runs/demo")          # doctest: +SKIP
    >>> save_verify(bilens.verify(model, x), "out/verify")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bilens.core.errors import BilensError
from bilens.core.io import atomic_dir, write_json

if TYPE_CHECKING:
    from bilens.analysis.verify import VerifyResult


def check_outdir(outdir: str | os.PathLike) -> None:
    """Raise unless `outdir/report` is free for `write` (absent, empty or a previous report):
    `write` replaces that directory whole."""
    final = Path(outdir) / "report"
    if final.exists() and (not final.is_dir() or (any(final.iterdir())
                                                  and not (final / "report.json").is_file())):
        raise BilensError(f"out: {str(final)!r} exists and is not a bilens report; choose "
                          f"another --out (the report directory is replaced whole)")


def write(results: dict[str, Any], outdir: str | os.PathLike) -> dict[str, Path]:
    """Write `report.html`, `report.md`, `report.json` and the PNGs into `outdir/report`.

    Args:
        results: the experiment's dict, with claims and recommendation
            (`bilens.experiments.summary.build`).
        outdir: the experiment's directory; `outdir/report` is replaced whole.

    Returns:
        `{"html": path, "markdown": path, "json": path, <image key>: path, ...}`.
    """
    from bilens.report.decomposition_section import RESULT_KEYS, render
    from bilens.report.html import html
    from bilens.report.markdown import markdown
    from bilens.report.plots import render_plots

    out = Path(outdir)
    check_outdir(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = render_plots(results)                                             # {key: png}
    for k in RESULT_KEYS:
        pngs.update(render(results.get(k)))
    names = {key: f"{key}.png" for key in pngs}
    with atomic_dir(out / "report") as tmp:
        for key, data in pngs.items():
            (tmp / names[key]).write_bytes(data)
        (tmp / "report.md").write_text(markdown(results, names))
        (tmp / "report.html").write_text(html(results, pngs))
        write_json(tmp / "report.json", results)
    final = out / "report"
    paths = {"html": final / "report.html", "markdown": final / "report.md",
             "json": final / "report.json"}
    paths.update({key: final / name for key, name in names.items()})
    return paths


def save_verify(result: VerifyResult, outdir: str | os.PathLike, *, plots: bool = True,
                command: str | None = None,
                before_commit: Callable[[], None] | None = None,
                overwrite: bool = False) -> Path:
    """Write `results.safetensors`, `metrics.json` (`VerifyResult.write`), `summary.md` and
    the PNGs into `outdir`, atomically: all appear together or, on error or Ctrl-C, none.

    Args:
        result: what `bilens.verify` returned.
        outdir: absent or empty, or a previous result (replaced only with `overwrite`).
        plots: draw the PNGs (`plot_verify`).
        command: the command line recorded in `summary.md`.
        before_commit: called once every file is written, before the rename into place;
            if it raises, nothing is left (a distributed run agrees on success here).
        overwrite: replace a previous result in `outdir` (`bilens verify --force`).

    Returns:
        `outdir`.
    """
    from bilens.analysis.verify import check_replaceable
    from bilens.report.verify_plots import plot_verify
    from bilens.report.verify_sequence_plots import plot_sequence
    from bilens.report.verify_summary import summary_markdown

    plot = plot_sequence if result.metrics.get("kind") == "sequence" else plot_verify

    out = Path(outdir)
    check_replaceable(out, overwrite)
    with atomic_dir(out) as tmp:
        result.write(tmp)
        images = plot(result, tmp) if plots else []
        (tmp / "summary.md").write_text(summary_markdown(
            result.metrics, [p.name for p in images], command))
        if before_commit is not None:
            before_commit()
    return out


def command_line() -> str:
    """The command that is running, as a user would type it."""
    return "bilens " + " ".join(shlex.quote(a) for a in sys.argv[1:])

"""A tidy CSV of a verification (`bilens verify --csv FILE`): one row per (input, layer,
channel), for pandas, R or a spreadsheet.

Columns: `input` (row of the verified batch), `layer`, `channel`, `activation` (`z`), one
`predicted_<mode>` per attribution mode, `actual` (the real ablation's effect) and
`actual_frozen_norm` (the effect with every norm frozen); the two last are `nan` where a
channel was not ablated (`--layers`). Numbers are written as Python's shortest round-trip
text, so float64 results survive exactly. The rows are streamed through the `csv` module
into a temporary file renamed into place: the file appears whole or not at all.

    import pandas as pd
    df = pd.read_csv("verify.csv")                # NaN where not ablated
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bilens.core.errors import BilensError
from bilens.core.io import atomic_file

if TYPE_CHECKING:
    from bilens.analysis.verify import VerifyResult

FIXED_COLUMNS = ("input", "layer", "channel", "activation")


def columns(modes: list[str]) -> list[str]:
    """The header: `input, layer, channel, activation, predicted_<mode>..., actual,
    actual_frozen_norm`."""
    return [*FIXED_COLUMNS, *(f"predicted_{m}" for m in modes), "actual", "actual_frozen_norm"]


def check_csv(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise unless `write_csv` may write `path`: absent, or (with `overwrite`) a CSV this
    module wrote (its header starts `input,layer,channel,activation`); never another file."""
    path = Path(path)
    if not path.exists():
        return
    try:
        with open(path, newline="") as f:
            first = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        first = []
    if tuple(first[:len(FIXED_COLUMNS)]) != FIXED_COLUMNS:
        raise BilensError(f"--csv: {str(path)!r} exists and is not a bilens verify CSV; bilens "
                          f"never writes over other files: choose another name")
    if not overwrite:
        raise BilensError(f"--csv: {str(path)!r} exists; pass --force to replace it "
                          f"(overwrite=True from Python)")


def write_csv(result: VerifyResult, path: str | os.PathLike, overwrite: bool = False) -> int:
    """Write `result` as the tidy CSV described above, atomically; returns the row count.

    Args:
        result: what `bilens.verify` returned.
        path: the CSV file.
        overwrite: replace an earlier CSV written here.

    Example:
        >>> write_csv(bilens.verify(model, x), "out/verify.csv")     # doctest: +SKIP
        6144
    """
    check_csv(path, overwrite)
    modes = result.modes
    t = result.tensors
    blocks = [t["activation"], *(t[f"predicted.{m}"] for m in modes), t["actual"],
              t["actual_frozen_norm"]]
    blocks = [b.detach().cpu().double() for b in blocks]          # [N, layer, hidden] each
    n, n_layers, d_hidden = blocks[0].shape
    rows = 0
    with atomic_file(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns(modes))
        for i in range(n):                                # one input at a time: streamed
            values = [b[i].tolist() for b in blocks]      # [layer][hidden] per column
            for layer in range(n_layers):
                for channel in range(d_hidden):
                    writer.writerow([i, layer, channel,
                                     *(v[layer][channel] for v in values)])
            rows += n_layers * d_hidden
    return rows

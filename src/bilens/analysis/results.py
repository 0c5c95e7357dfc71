"""Result files (docs/spec.md §7): tensors in safetensors, a JSON summary beside them.

`bilens attribute` writes `FILE` (tensors) and `FILE` with suffix `.json` (summary);
`bilens verify` writes `OUTDIR/results.safetensors` and `OUTDIR/metrics.json`. Both go
through `save_results`, which writes each file atomically (a temporary file renamed into
place), tensors first, so a reader never sees a half-written file.

Any tool can read them without bilens:

    from safetensors.torch import load_file
    tensors = load_file("attr.safetensors")       # inputs, target|label, activation, predicted
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from bilens.core.errors import BilensError
from bilens.core.io import atomic_file, dump_json

FORMAT_VERSION = 1
FORMAT = f"bilens-results/{FORMAT_VERSION}"   # the marker in the header and the JSON summary


def summary_path_for(path: str | os.PathLike) -> Path:
    """The default JSON summary beside a tensor file: `attr.safetensors` -> `attr.json`."""
    path = Path(path)
    return path.with_suffix(".json") if path.suffix else path.with_name(path.name + ".json")


def save_results(
    path: str | os.PathLike,
    tensors: dict[str, Tensor],
    summary: dict[str, Any],
    summary_path: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write tensors to `path` (safetensors) and `summary` to JSON beside it, atomically.

    Args:
        path: the tensor file, e.g. `attr.safetensors` or `OUTDIR/results.safetensors`.
        tensors: name -> tensor (docs/spec.md §7 names: `inputs`, `target` or `label`,
            `activation`, `predicted` or `predicted.frozen`, ..., `actual`, ...).
            Moved to CPU and made contiguous; float tensors other than float32/float64
            are stored as float32.
        summary: JSON-serializable metadata (NaN and inf become null). A copy is also
            stored in the safetensors header under the key `"summary"`; both carry the
            marker `"format": "bilens-results/1"`.
        summary_path: where the JSON goes; default `path` with suffix `.json`.
        overwrite: replace an earlier bilens result there (see `check_result_file`: a file
            bilens did not write, or a checkpoint's directory, is never written).

    Returns:
        `(tensor file, summary file)`.

    Example:
        >>> save_results("out/attr.safetensors", {"predicted": p}, {"mode": "frozen"})
        ...                                                           # doctest: +SKIP
    """
    path = Path(path)
    summary_path = summary_path_for(path) if summary_path is None else Path(summary_path)
    if path.resolve() == summary_path.resolve():
        raise BilensError(f"summary_path: must differ from the tensor file {str(path)!r}")
    check_result_file(path, summary_path, overwrite=overwrite)
    clean = {}
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise BilensError(f"tensors[{name!r}]: expected a torch.Tensor, got "
                              f"{type(value).__name__}")
        value = value.detach().to("cpu")
        if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
            value = value.float()
        clean[name] = value.contiguous().clone()        # no shared storage for safetensors
    summary = {"format": FORMAT, **_jsonable(summary)}
    header = {"summary": json.dumps(summary), "format": FORMAT}
    data = save(clean, metadata=header)                 # bytes: the whole file
    # both files are written to temporaries first and renamed only once both are whole, so
    # an interrupt during the writes leaves neither
    with atomic_file(path, "wb") as f, atomic_file(summary_path) as g:
        f.write(data)
        dump_json(summary, g)
    return path, summary_path


def check_result_file(path: str | os.PathLike, summary_path: str | os.PathLike | None = None,
                      *, command: str | None = None, overwrite: bool = False) -> None:
    """Raise unless `save_results` may write `path` and its JSON summary `summary_path`.

    Never: into a checkpoint directory (`config.json` + `model.safetensors`), or over a
    file that is not a bilens result (a `.safetensors` without the `bilens-results` header
    marker, a `.json` without it; with `command`, one whose summary names another command).
    An earlier result is replaced only with `overwrite=True` (`--force`).
    """
    from bilens.core.checkpoint import CONFIG_FILE, TENSOR_FILE

    path = Path(path)
    summary_path = summary_path_for(path) if summary_path is None else Path(summary_path)
    for file in (path, summary_path):
        parent = file.resolve().parent
        if (parent / CONFIG_FILE).is_file() and (parent / TENSOR_FILE).is_file():
            raise BilensError(f"--out: {str(file)!r} is inside the checkpoint directory "
                              f"{str(file.parent)!r}; write results outside it (e.g. --out "
                              f"attr.safetensors)")
    existing = [f for f in (path, summary_path) if f.exists()]
    for file in existing:
        summary = _marked_summary(file)
        if summary is None or (command is not None and summary.get("command") != command):
            what = f"a bilens {command} result" if command else "a bilens result"
            raise BilensError(f"--out: {str(file)!r} exists and is not {what}; bilens never "
                              f"writes over other files: choose another --out")
    if existing and not overwrite:
        raise BilensError(f"--out: {str(existing[0])!r} exists; pass --force to replace it "
                          f"(overwrite=True from Python)")


def _marked_summary(file: Path) -> dict[str, Any] | None:
    """The summary of a file bilens wrote as a result (its `format` marker), else None."""
    try:
        if file.suffix == ".json":
            summary = json.loads(file.read_text())
        else:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                return None
            summary = json.loads(meta.get("summary", "{}"))
    except Exception:  # unreadable, not JSON, not safetensors: not ours
        return None
    if not isinstance(summary, dict):
        return None
    if file.suffix == ".json" and summary.get("format") != FORMAT:
        return None
    return summary


def load_results(
    path: str | os.PathLike,
    summary_path: str | os.PathLike | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a result file written by `save_results` (or any safetensors file).

    Args:
        path: the tensor file.
        summary_path: the JSON summary; default `path` with suffix `.json`, falling back
            to the copy in the safetensors header (or `{}`).

    Returns:
        `(tensors, summary)`.

    Example:
        >>> tensors, summary = load_results("out/attr.safetensors")    # doctest: +SKIP
        >>> tensors["predicted"].shape                                 # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise BilensError(f"results: no file at {str(path)!r}; write one with "
                          f"`bilens attribute ... --out {path}`")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise BilensError(f"results: {str(path)!r} is not a readable safetensors file "
                          f"({err})") from None
    json_path = summary_path_for(path) if summary_path is None else Path(summary_path)
    if json_path.is_file():
        return tensors, json.loads(json_path.read_text())
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return tensors, json.loads(meta["summary"]) if "summary" in meta else {}


def _jsonable(obj: Any) -> Any:
    """Plain JSON: tensors and numpy scalars to lists/numbers, NaN/inf to None, paths to str."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):      # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj

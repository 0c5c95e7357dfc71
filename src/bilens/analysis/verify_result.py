"""The result of `bilens verify` (MLP networks and sequence models alike): its tensors, its
metrics, and how they are written and read (docs/spec.md §7, §9)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from bilens.core.errors import BilensError
from bilens.core.io import atomic_dir

RESULT_FILES = ("results.safetensors", "metrics.json")   # the data; the report adds the rest


@dataclass
class VerifyResult:
    """What `verify` measured.

    Attributes:
        tensors: docs/spec.md §7 names: `inputs [N, d_in]`, `target [N, n_out]` (or `label [N]`),
            `activation`, `predicted.<mode>`, `actual`, `actual_frozen_norm` (all
            `[N, L, H]`, NaN where not ablated), plus `drift.measured`, `drift.formula`
            (`ds/s`, `[N, L, H]`) and `circuit.<mode>.{sum_predicted,joint,sum_actual}` `[K, N]`.
        metrics: `{"info", "modes": {mode: {"overall", "per_layer", "per_input",
            "decomposition", "circuit"}}, "drift"}` (JSON-ready).
    """

    tensors: dict[str, Tensor]
    metrics: dict[str, Any]

    @property
    def modes(self) -> list[str]:
        return list(self.metrics["modes"])

    def predicted(self, mode: str) -> Float[Tensor, "batch layer hidden"]:
        return self.tensors[f"predicted.{mode}"]

    def write(self, directory: str | os.PathLike) -> None:
        """Write `results.safetensors` and `metrics.json` into the existing `directory`, as
        they are (not atomic: `save` and `bilens.report.save_verify` wrap it)."""
        from bilens.analysis.results import save_results

        d = Path(directory)
        save_results(d / "results.safetensors", self.tensors, self.metrics,
                     summary_path=d / "metrics.json")

    def save(self, outdir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the data files (`results.safetensors`, `metrics.json`) into `outdir`,
        atomically: both appear together or, on error or Ctrl-C, neither. With the table,
        `summary.md` and the PNGs beside them: `bilens.report.save_verify`.

        `outdir` must be absent or empty; a previous result there is replaced only with
        `overwrite=True` (`bilens verify --force`), any other directory never.
        """
        out = Path(outdir)
        check_replaceable(out, overwrite)
        with atomic_dir(out) as tmp:
            self.write(tmp)
        return out

    @classmethod
    def load(cls, outdir: str | os.PathLike) -> VerifyResult:
        """Read a directory written by `save`."""
        from bilens.analysis.results import load_results

        out = Path(outdir)
        missing = [f for f in RESULT_FILES if not (out / f).exists()]
        if missing:
            raise BilensError(f"{str(out)!r}: missing {missing}; is it a `bilens verify` output?")
        tensors, metrics = load_results(out / "results.safetensors", out / "metrics.json")
        return cls(tensors, _from_json(metrics))


def replaceable(out: Path) -> bool:
    """True if `save` may write `out`: absent, an empty directory, or a previous result
    (`results.safetensors` and `metrics.json`; a lone `metrics.json` may be another tool's)."""
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    return not any(out.iterdir()) or all((out / f).is_file() for f in RESULT_FILES)


def check_replaceable(out: Path, overwrite: bool = False) -> None:
    """Raise unless `out` is `replaceable` and, if it holds a previous result, `overwrite`
    is set: saving replaces the directory whole."""
    out = Path(out)
    if not replaceable(out):
        raise BilensError(f"out: {str(out)!r} exists and is not a bilens verify result; "
                          f"choose a new directory (it would be replaced)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BilensError(f"out: {str(out)!r} exists; pass --force to replace it "
                          f"(overwrite=True from Python)")


def _from_json(obj: Any) -> Any:
    """None -> NaN inside metric dicts (inverse of `_json_ready` for numbers)."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: (v if k == "baseline" else _from_json(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj

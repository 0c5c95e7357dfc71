"""bilens: bilinear residual networks whose channel attributions are checked against ablations.

Public names are re-exported here and imported on first use, so `import bilens` and the
CLI start fast.

Example:
    >>> import bilens
    >>> model = bilens.load("runs/digits")                      # doctest: +SKIP
    >>> pred = bilens.attribute(model, x, target="predicted")   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BilensError": "bilens.errors",
    "ModelConfig": "bilens.config",
    "Norm": "bilens.norms",
    "BilinearNet": "bilens.model",
    "Run": "bilens.model",
    "Target": "bilens.targets",
    "resolve_target": "bilens.targets",
    "load_dataset": "bilens.data",
    "Dataset": "bilens.data",
    "DATASETS": "bilens.data",
    "TrainConfig": "bilens.train",
    "train": "bilens.train",
    "save": "bilens.checkpoint",
    "load": "bilens.checkpoint",
    "attribute": "bilens.attribution",
    "run_with_cache": "bilens.attribution",
    "ablation_effects": "bilens.ablation",
    "verify": "bilens.verify",
    "VerifyResult": "bilens.verify",
    "compare": "bilens.compare",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bilens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover  (explicit re-exports for type checkers)
    from bilens.ablation import ablation_effects as ablation_effects
    from bilens.attribution import attribute as attribute
    from bilens.attribution import run_with_cache as run_with_cache
    from bilens.checkpoint import load as load
    from bilens.checkpoint import save as save
    from bilens.compare import compare as compare
    from bilens.config import ModelConfig as ModelConfig
    from bilens.data import DATASETS as DATASETS
    from bilens.data import Dataset as Dataset
    from bilens.data import load_dataset as load_dataset
    from bilens.errors import BilensError as BilensError
    from bilens.model import BilinearNet as BilinearNet
    from bilens.model import Run as Run
    from bilens.norms import Norm as Norm
    from bilens.targets import Target as Target
    from bilens.targets import resolve_target as resolve_target
    from bilens.train import TrainConfig as TrainConfig
    from bilens.train import train as train
    from bilens.verify import VerifyResult as VerifyResult
    from bilens.verify import verify as verify

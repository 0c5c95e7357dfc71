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


if TYPE_CHECKING:  # pragma: no cover
    from bilens.ablation import ablation_effects
    from bilens.attribution import attribute, run_with_cache
    from bilens.checkpoint import load, save
    from bilens.compare import compare
    from bilens.config import ModelConfig
    from bilens.data import DATASETS, Dataset, load_dataset
    from bilens.errors import BilensError
    from bilens.model import BilinearNet, Run
    from bilens.norms import Norm
    from bilens.targets import Target, resolve_target
    from bilens.train import TrainConfig, train
    from bilens.verify import VerifyResult, verify

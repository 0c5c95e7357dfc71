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
    "BilensError": "bilens.core.errors",
    "ModelConfig": "bilens.core.config",
    "Norm": "bilens.core.norms",
    "BilinearNet": "bilens.core.models.mlp",
    "Run": "bilens.core.models.mlp",
    "Target": "bilens.core.targets",
    "resolve_target": "bilens.core.targets",
    "load_dataset": "bilens.core.data",
    "Dataset": "bilens.core.data",
    "DATASETS": "bilens.core.data",
    "TrainConfig": "bilens.training.train",
    "train": "bilens.training.train",
    "save": "bilens.core.checkpoint",
    "load": "bilens.core.checkpoint",
    "attribute": "bilens.attribution.predict",
    "run_with_cache": "bilens.attribution.predict",
    "ablation_effects": "bilens.ablation.ablate",
    "verify": "bilens.analysis.verify",
    "attribute_sequence": "bilens.attribution.sequence",
    "sequence_ablation_effects": "bilens.ablation.sequence",
    "feature_ablation_effects": "bilens.ablation.sequence",
    "BilinearTransformer": "bilens.core.models.transformer",
    "TransformerConfig": "bilens.core.config",
    "VerifyResult": "bilens.analysis.verify",
    "compare": "bilens.experiments.compare",
    "decompose": "bilens.analysis.decompose",
    "Decomposition": "bilens.analysis.decompose",
    "TransformerRun": "bilens.core.models.transformer",
    "Intervention": "bilens.core.models.intervention",
    "load_lm_data": "bilens.core.lm_data",
    "generate": "bilens.core.sampling",
    "import_published": "bilens.core.published",
    "LMTrainConfig": "bilens.training.lm",
    "train_lm": "bilens.training.lm",
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
    from bilens.ablation.ablate import ablation_effects as ablation_effects
    from bilens.ablation.sequence import feature_ablation_effects as feature_ablation_effects
    from bilens.ablation.sequence import sequence_ablation_effects as sequence_ablation_effects
    from bilens.analysis.decompose import Decomposition as Decomposition
    from bilens.analysis.decompose import decompose as decompose
    from bilens.analysis.verify import VerifyResult as VerifyResult
    from bilens.analysis.verify import verify as verify
    from bilens.attribution.predict import attribute as attribute
    from bilens.attribution.predict import run_with_cache as run_with_cache
    from bilens.attribution.sequence import attribute_sequence as attribute_sequence
    from bilens.core.checkpoint import load as load
    from bilens.core.checkpoint import save as save
    from bilens.core.config import ModelConfig as ModelConfig
    from bilens.core.config import TransformerConfig as TransformerConfig
    from bilens.core.data import DATASETS as DATASETS
    from bilens.core.data import Dataset as Dataset
    from bilens.core.data import load_dataset as load_dataset
    from bilens.core.errors import BilensError as BilensError
    from bilens.core.lm_data import load_lm_data as load_lm_data
    from bilens.core.models.intervention import Intervention as Intervention
    from bilens.core.models.mlp import BilinearNet as BilinearNet
    from bilens.core.models.mlp import Run as Run
    from bilens.core.models.transformer import BilinearTransformer as BilinearTransformer
    from bilens.core.models.transformer import TransformerRun as TransformerRun
    from bilens.core.norms import Norm as Norm
    from bilens.core.published import import_published as import_published
    from bilens.core.sampling import generate as generate
    from bilens.core.targets import Target as Target
    from bilens.core.targets import resolve_target as resolve_target
    from bilens.experiments.compare import compare as compare
    from bilens.training.lm import LMTrainConfig as LMTrainConfig
    from bilens.training.lm import train_lm as train_lm
    from bilens.training.train import TrainConfig as TrainConfig
    from bilens.training.train import train as train

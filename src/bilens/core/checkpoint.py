"""The checkpoint of docs/spec.md §6: a directory with `config.json` and `model.safetensors`.

Only JSON and safetensors, never pickle, so any tool can read a checkpoint without bilens
and loading one can run no code. `save` writes the directory atomically (an interrupted
save leaves nothing behind); `load` refuses, with a message naming the tensor, a file
that does not match its config.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from bilens.core.config import ModelConfig
from bilens.core.errors import BilensError
from bilens.core.io import atomic_dir
from bilens.core.models.mlp import BilinearNet

CONFIG_FILE = "config.json"
TENSOR_FILE = "model.safetensors"
_CONFIG_KEYS = {f.name for f in fields(ModelConfig)}


def save(model: BilinearNet, directory: str | os.PathLike, metadata: dict | None = None,
         overwrite: bool = False) -> Path:
    """Write `model` (and `metadata`) to `directory` as docs/spec.md §6, atomically.

    Args:
        model: the network to save; its tensors are stored in their own dtype.
        directory: the checkpoint directory: absent or empty, or (with `overwrite`) an
            existing checkpoint, which is then replaced whole.
        metadata: extra JSON-serializable keys for `config.json` (dataset, test_accuracy,
            seed, ...); `version` is added when absent. Keys may not shadow config keys.
        overwrite: replace an existing checkpoint (`bilens train --force`).

    Returns:
        The directory's path.

    Example:
        >>> save(model, "runs/digits", {"dataset": "digits"})   # doctest: +SKIP
    """
    from safetensors.torch import save_file

    from bilens import __version__

    check_replaceable(directory, overwrite)
    metadata = dict(metadata or {})
    clash = sorted(_CONFIG_KEYS & metadata.keys())
    if clash:
        raise BilensError(f"metadata: keys {clash} would overwrite the model config; rename them")
    config = {**model.config.to_dict(), "version": __version__, **metadata}
    try:
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise BilensError(f"metadata: not JSON-serializable ({err}); pass plain numbers, "
                          f"strings, lists and dicts") from err
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / TENSOR_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(text)
    return Path(directory)


def check_replaceable(directory: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise unless `directory` is free for `save`: absent, empty, or with `overwrite` a
    checkpoint (which `save` replaces whole; any other directory would be deleted with its
    contents, so it is refused even with `overwrite`)."""
    root = Path(directory)
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return
    if root.is_dir() and ((root / CONFIG_FILE).exists() or (root / TENSOR_FILE).exists()):
        if overwrite:
            return
        raise BilensError(f"checkpoint: {str(root)!r} exists; pass --force to replace it "
                          f"(overwrite=True from Python)")
    raise BilensError(f"checkpoint: {str(root)!r} exists and is not a checkpoint directory; "
                      f"choose a new directory (saving replaces it whole)")


def load(directory: str | os.PathLike, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> BilinearNet:
    """Read a docs/spec.md §6 checkpoint, checking every tensor against the config.

    Args:
        directory: the checkpoint directory.
        device: where to put the model (default CPU; `"auto"` picks CUDA when available).
        dtype: the parameters' dtype; None keeps the file's (float32 for half precision).

    Returns:
        The model in eval mode, with `model.metadata` (the non-config keys of
        `config.json`; `{}` when there are none).

    Example:
        >>> model = load("runs/digits", dtype=torch.float64)   # doctest: +SKIP
        >>> model.metadata["test_accuracy"]                     # doctest: +SKIP
    """
    root = Path(directory)
    if not root.is_dir():
        raise BilensError(f"checkpoint: directory {str(root)!r} not found; pass the --out "
                          f"directory of `bilens train`")
    raw = _read_config(root)
    config = ModelConfig.from_dict(raw)
    tensors = _read_tensors(root)
    file_dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    if dtype is None:
        dtype = file_dtype if file_dtype in (torch.float32, torch.float64) else torch.float32
    model = BilinearNet(config).to(dtype=dtype)
    _check_tensors(config, model.state_dict(), tensors, root)
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True)
    model.metadata = {k: v for k, v in raw.items() if k not in _CONFIG_KEYS}
    if device is not None:
        from bilens.core.device import resolve_device
        device = resolve_device(str(device))
    return model.to(device or "cpu").eval()


def _read_config(root: Path) -> dict[str, Any]:
    path = root / CONFIG_FILE
    if not path.is_file():
        raise BilensError(f"checkpoint: {path} not found; a checkpoint directory holds "
                          f"{CONFIG_FILE} and {TENSOR_FILE} (docs/spec.md §6)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BilensError(f"checkpoint: {path} is not valid JSON ({err}); re-save the "
                          f"checkpoint") from err
    if not isinstance(raw, dict):
        raise BilensError(f"checkpoint: {path} must hold a JSON object, got "
                          f"{type(raw).__name__}")
    return raw


def _read_tensors(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = root / TENSOR_FILE
    if not path.is_file():
        raise BilensError(f"checkpoint: {path} not found; a checkpoint directory holds "
                          f"{CONFIG_FILE} and {TENSOR_FILE} (docs/spec.md §6)")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error type for corrupt files
        raise BilensError(f"checkpoint: {path} is unreadable or corrupt "
                          f"({type(err).__name__}: {err}); re-save the checkpoint") from err


def _check_tensors(config: ModelConfig, expected: dict[str, torch.Tensor],
                   found: dict[str, torch.Tensor], root: Path) -> None:
    """Refuse missing, unknown, mis-shaped, non-float or non-finite tensors, by name."""
    where = f"checkpoint {str(root)!r}"
    summary = (f"config.json says d_in={config.d_in}, d_model={config.d_model}, "
               f"d_hidden={config.d_hidden}, n_layers={config.n_layers}, n_out={config.n_out}, "
               f"norm={config.norm!r}, norm_position={config.norm_position!r}")
    for name in expected:
        if name not in found:
            raise BilensError(f"{where}: tensor {name!r} is missing ({summary})")
    for name in found:
        if name not in expected:
            raise BilensError(f"{where}: unknown tensor {name!r} ({summary}); expected only "
                              f"{_compact(expected)}")
    for name, want in expected.items():
        got = found[name]
        if tuple(got.shape) != tuple(want.shape):
            raise BilensError(f"{where}: tensor {name!r} has shape {list(got.shape)}, expected "
                              f"{list(want.shape)} ({summary})")
        if not got.is_floating_point():
            raise BilensError(f"{where}: tensor {name!r} has dtype {got.dtype}, expected a "
                              f"floating-point dtype")
        if not bool(torch.isfinite(got).all()):
            raise BilensError(f"{where}: tensor {name!r} contains NaN or inf; the checkpoint "
                              f"is corrupt or the training diverged")


def _compact(names: dict[str, Any]) -> str:
    listed = sorted(names)
    return ", ".join(listed) if len(listed) <= 12 else ", ".join(listed[:12]) + ", ..."


def describe(model: BilinearNet) -> dict[str, Any]:
    """Config, parameter count and metadata of a loaded model, as `bilens info` prints them."""
    meta = getattr(model, "metadata", {}) or {}
    acc = meta.get("test_accuracy")
    return {
        "config": model.config.to_dict(),
        "n_params": model.n_params,
        "dtype": str(model.dtype).removeprefix("torch."),
        "test_accuracy": acc if isinstance(acc, (int, float)) and math.isfinite(acc) else None,
        "metadata": meta,
    }

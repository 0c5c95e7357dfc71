"""The checkpoint of docs/spec.md §6 and §9: a directory with `config.json` and `model.safetensors`
(and, for a sequence model, its `tokenizer.json`).

`config.json`'s `kind` picks the model family: `"transformer"` is docs/spec.md §9's
`BilinearTransformer`; a missing `kind` (or `"mlp"`) is docs/spec.md §1's `BilinearNet`.

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

from bilens.core.config import ModelConfig, TransformerConfig
from bilens.core.errors import BilensError
from bilens.core.io import atomic_dir
from bilens.core.models.mlp import BilinearNet
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.tokenizer import TOKENIZER_FILE, load_tokenizer

CONFIG_FILE = "config.json"
TENSOR_FILE = "model.safetensors"
_CONFIG_KEYS = {f.name for f in fields(ModelConfig)}
_FAMILIES = {"mlp": (ModelConfig, BilinearNet), "transformer": (TransformerConfig,
                                                                 BilinearTransformer)}
Model = BilinearNet | BilinearTransformer


def save(model: Model, directory: str | os.PathLike, metadata: dict | None = None,
         overwrite: bool = False) -> Path:
    """Write `model` (and `metadata`) to `directory` as docs/spec.md §6 (§9), atomically; a
    transformer's `model.tokenizer`, when set, is written beside it as `tokenizer.json`.

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
    clash = sorted({f.name for f in fields(model.config)} & metadata.keys())
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
        if getattr(model, "tokenizer", None) is not None:
            model.tokenizer.save(str(tmp / TOKENIZER_FILE))
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
         dtype: torch.dtype | None = None) -> Model:
    """Read a docs/spec.md §6 or §9 checkpoint, checking every tensor against the config.

    Args:
        directory: the checkpoint directory.
        device: where to put the model (default CPU; `"auto"` picks CUDA when available).
        dtype: the parameters' dtype; None keeps the file's (float32 for half precision).

    Returns:
        The model in eval mode (`BilinearNet`, or `BilinearTransformer` when `kind` is
        `"transformer"`), with `model.metadata` (the non-config keys of `config.json`; `{}`
        when there are none) and, for a transformer, `model.tokenizer` (None without a
        `tokenizer.json`).

    Example:
        >>> model = load("runs/digits", dtype=torch.float64)   # doctest: +SKIP
        >>> model.metadata["test_accuracy"]                     # doctest: +SKIP
    """
    root = Path(directory)
    if not root.is_dir():
        raise BilensError(f"checkpoint: directory {str(root)!r} not found; pass the --out "
                          f"directory of `bilens train`")
    raw = _read_config(root)
    kind = raw.get("kind", "mlp")
    if kind not in _FAMILIES:
        raise BilensError(f"checkpoint: config.json kind {kind!r} is unknown; expected "
                          f"'transformer' or 'mlp' (a missing kind means 'mlp')")
    config_type, model_type = _FAMILIES[kind]
    config = config_type.from_dict(raw)
    tensors = _read_tensors(root)
    file_dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    if dtype is None:
        dtype = file_dtype if file_dtype in (torch.float32, torch.float64) else torch.float32
    model = model_type(config).to(dtype=dtype)
    _check_tensors(config, model.state_dict(), tensors, root)
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True)
    names = {f.name for f in fields(config_type)}
    model.metadata = {k: v for k, v in raw.items() if k not in names}
    if kind == "transformer":
        model.tokenizer = _read_tokenizer(root, config)
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


def _read_tokenizer(root: Path, config: TransformerConfig):
    path = root / TOKENIZER_FILE
    if not path.is_file():
        return None
    tokenizer = load_tokenizer(path)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise BilensError(f"checkpoint: {path} has {tokenizer.get_vocab_size()} tokens but "
                          f"config.json says vocab_size={config.vocab_size}; save the model "
                          f"with the tokenizer it was trained with")
    return tokenizer


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


def _check_tensors(config: ModelConfig | TransformerConfig, expected: dict[str, torch.Tensor],
                   found: dict[str, torch.Tensor], root: Path) -> None:
    """Refuse missing, unknown, mis-shaped, non-float or non-finite tensors, by name."""
    where = f"checkpoint {str(root)!r}"
    shown = ("d_in", "vocab_size", "d_model", "d_hidden", "n_layers", "n_heads", "n_out", "norm",
             "norm_position")
    summary = "config.json says " + ", ".join(
        f"{k}={getattr(config, k)!r}" for k in shown if hasattr(config, k))
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


def describe(model: Model) -> dict[str, Any]:
    """Config, parameter count and metadata of a loaded model, as `bilens info` prints them
    (a transformer's also: `kind`, tensor shapes, tokenizer, `val_loss`)."""
    meta = getattr(model, "metadata", {}) or {}
    acc = meta.get("test_accuracy")
    info = {
        "config": model.config.to_dict(),
        "n_params": model.n_params,
        "dtype": str(model.dtype).removeprefix("torch."),
        "test_accuracy": acc if isinstance(acc, (int, float)) and math.isfinite(acc) else None,
        "metadata": meta,
    }
    if isinstance(model, BilinearTransformer):
        tok = model.tokenizer
        loss = meta.get("val_loss")
        info.update(kind="transformer",
                    shapes={k: list(v.shape) for k, v in model.state_dict().items()},
                    tokenizer=None if tok is None else f"byte-level BPE, "
                                                       f"{tok.get_vocab_size()} tokens",
                    val_loss=loss if isinstance(loss, (int, float)) else None)
    return info

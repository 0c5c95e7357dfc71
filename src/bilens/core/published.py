"""Import of the published bilinear transformers (Pearce, Dooms et al.) into docs/spec.md §9.

Their directory holds an HF-style `config.json` (`n_head, n_layer, n_ctx, d_model,
d_hidden, bilinear, gate, bias, normalization, tokenizer`), `model.safetensors`, and often a
`tokenizer.json`. Their tensors, and where each goes:

| theirs | shape | docs/spec.md §9 |
| --- | --- | --- |
| `transformer.wte.weight` | `[vocab, d]` | `embed.weight` |
| `transformer.h.{l}.attn.qkv.weight` | `[3d, d]` | `layers.{l}.attn.{q,k,v}.weight` * |
| `transformer.h.{l}.attn.o.weight` | `[d, d]` | `layers.{l}.attn.o.weight` |
| `transformer.h.{l}.mlp.w.weight` | `[2H, d]` | `layers.{l}.L`, `layers.{l}.R` ** |
| `transformer.h.{l}.mlp.p.weight` | `[d, H]` | `layers.{l}.D` |
| `lm_head.weight` | `[vocab, d]` | `head.weight` |

* rows: all of `q`, then `k`, then `v`, each head-major.
** first half `L`, second half `R` (`H` = d_hidden).

Their norm is RMSNorm without a gain, eps 1e-8, before attention, before the MLP and
before the head (`normalization: false`: no norm): our pre-norm `rms` with every gain 1.
Their attention output is scaled by `1/sqrt(2 n_layer)`: our `attn_scale`. Their rotary
positions use base 10000 and the rotate-half convention of §9. Only JSON and safetensors
are read; pickled weights (`.bin`, `.pt`) are refused, never unpickled.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from bilens.core.config import TransformerConfig
from bilens.core.errors import BilensError
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.tokenizer import TOKENIZER_FILE, load_tokenizer

PUBLISHED_EPS = 1e-8
PUBLISHED_ROPE_BASE = 10000.0
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_published(src: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Their `config.json` and tensors, after the refusals (gate, bias, non-bilinear MLP,
    pickled weights); every refusal is one `BilensError` line."""
    root = Path(src)
    if not root.is_dir():
        raise BilensError(f"import: {str(root)!r} is not a directory; pass the folder holding "
                          f"config.json and model.safetensors")
    weights = root / "model.safetensors"
    if not weights.is_file():
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in _PICKLES)
        if pickles:
            raise BilensError(f"import: {str(root)!r} holds pickled weights {pickles} and no "
                              f"model.safetensors; bilens never unpickles: convert them to "
                              f"safetensors with the tool that wrote them")
        raise BilensError(f"import: {weights} not found; a published checkpoint holds "
                          f"config.json and model.safetensors")
    try:
        cfg = json.loads((root / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BilensError(f"import: cannot read {root / 'config.json'} ({err}); expected the "
                          f"published HF-style config") from err
    if not isinstance(cfg, dict):
        raise BilensError(f"import: {root / 'config.json'} must hold a JSON object")
    missing = sorted({"n_head", "n_layer", "n_ctx", "d_model", "d_hidden"} - cfg.keys())
    if missing:
        raise BilensError(f"import: config.json lacks {missing}; is this a published "
                          f"bilinear-transformer checkpoint?")
    if cfg.get("gate") is not None:
        raise BilensError(f"import: config.json has gate={cfg['gate']!r}; a gated MLP is not "
                          f"a bilinear layer of docs/spec.md §9, only gate null can be imported")
    if cfg.get("bias", False):
        raise BilensError("import: config.json has bias=true; docs/spec.md §9 has no biases, only "
                          "checkpoints trained with bias=false can be imported")
    if cfg.get("bilinear", True) is not True:
        raise BilensError(f"import: config.json has bilinear={cfg.get('bilinear')!r}; only "
                          f"bilinear MLPs (bilinear=true) can be imported")
    if not isinstance(cfg.get("normalization", True), bool):
        raise BilensError(f"import: config.json normalization={cfg['normalization']!r}; "
                          f"expected true (RMSNorm) or false (none)")
    from safetensors.torch import load_file
    try:
        tensors = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error type
        raise BilensError(f"import: {weights} is unreadable ({type(err).__name__}: {err})"
                          ) from err
    biases = sorted(k for k in tensors if k.endswith(".bias"))
    if biases:
        raise BilensError(f"import: model.safetensors holds biases ({biases[:3]}...); "
                          f"docs/spec.md §9 has none, so this checkpoint cannot be represented")
    return cfg, tensors


def convert(cfg: dict[str, Any], tensors: dict[str, torch.Tensor]
            ) -> tuple[TransformerConfig, dict[str, torch.Tensor]]:
    """Their config and tensors -> a §9 `TransformerConfig` and state dict (exact copies)."""
    n_layers, d = cfg["n_layer"], cfg["d_model"]
    wte = _get(tensors, "transformer.wte.weight")
    vocab = cfg.get("vocab_size", wte.shape[0])
    config = TransformerConfig(
        vocab_size=vocab, n_ctx=cfg["n_ctx"], d_model=d, d_hidden=cfg["d_hidden"],
        n_layers=n_layers, n_heads=cfg["n_head"],
        norm="rms" if cfg.get("normalization", True) else "none", norm_position="pre",
        eps=PUBLISHED_EPS, rope_base=PUBLISHED_ROPE_BASE, attn_scale=1 / math.sqrt(2 * n_layers))
    H = config.d_hidden
    state = {"embed.weight": wte, "head.weight": _get(tensors, "lm_head.weight")}
    for l in range(n_layers):
        pre = f"transformer.h.{l}"
        qkv = _get(tensors, f"{pre}.attn.qkv.weight", (3 * d, d))
        w = _get(tensors, f"{pre}.mlp.w.weight", (2 * H, d))
        state.update({
            f"layers.{l}.attn.q.weight": qkv[:d], f"layers.{l}.attn.k.weight": qkv[d:2 * d],
            f"layers.{l}.attn.v.weight": qkv[2 * d:],
            f"layers.{l}.attn.o.weight": _get(tensors, f"{pre}.attn.o.weight", (d, d)),
            f"layers.{l}.L": w[:H], f"layers.{l}.R": w[H:],
            f"layers.{l}.D": _get(tensors, f"{pre}.mlp.p.weight", (d, H))})
    used = {"transformer.wte.weight", "lm_head.weight"} | {
        f"transformer.h.{l}.{n}.weight" for l in range(n_layers)
        for n in ("attn.qkv", "attn.o", "mlp.w", "mlp.p")}
    extra = sorted(set(tensors) - used)
    if extra:
        raise BilensError(f"import: unexpected tensors {extra[:4]} for n_layer={n_layers}; the "
                          f"config contradicts the tensors, or this is not the published layout")
    for name in ("embed.weight", "head.weight"):
        if tuple(state[name].shape) != (vocab, d):
            raise BilensError(f"import: {name} has shape {list(state[name].shape)}, expected "
                              f"[{vocab}, {d}] (vocab_size, d_model); config contradicts tensors")
    return config, state


def _get(tensors: dict[str, torch.Tensor], name: str,
         shape: tuple[int, ...] | None = None) -> torch.Tensor:
    if name not in tensors:
        raise BilensError(f"import: tensor {name!r} is missing; the config contradicts the "
                          f"tensors, or this is not the published layout")
    t = tensors[name]
    if shape is not None and tuple(t.shape) != shape:
        raise BilensError(f"import: tensor {name!r} has shape {list(t.shape)}, expected "
                          f"{list(shape)} from config.json; the config contradicts the tensors")
    if not t.is_floating_point():
        raise BilensError(f"import: tensor {name!r} has dtype {t.dtype}, expected floats")
    return t


def import_published(src: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False
                     ) -> Path:
    """Convert a published bilinear-transformer directory into a §9 checkpoint at `out`.

    Args:
        src: the published directory (`config.json`, `model.safetensors`, maybe
            `tokenizer.json`).
        out: the new checkpoint directory (written atomically).

    Returns:
        `out`'s path.

    Example:
        >>> import_published("downloads/tinystories-bilinear", "runs/ts")  # doctest: +SKIP
    """
    from bilens.core.checkpoint import save

    cfg, tensors = read_published(src)
    config, state = convert(cfg, tensors)
    dtype = torch.float64 if state["embed.weight"].dtype == torch.float64 else torch.float32
    model = BilinearTransformer(config).to(dtype)
    full = {**model.state_dict(), **{k: v.to(dtype) for k, v in state.items()}}
    model.load_state_dict(full, strict=True)          # norm gains stay 1 (theirs have none)
    tok_path = Path(src) / TOKENIZER_FILE
    if tok_path.is_file():
        model.tokenizer = load_tokenizer(tok_path)
        if model.tokenizer.get_vocab_size() > config.vocab_size:
            raise BilensError(f"import: {tok_path} has {model.tokenizer.get_vocab_size()} "
                              f"tokens, more than the embedding's {config.vocab_size} rows; "
                              f"it is not this model's tokenizer")
    meta = {"dataset": cfg.get("dataset"), "source": str(Path(src).resolve()),
            "imported_from": "published bilinear-transformer layout",
            "tokenizer_name": cfg.get("tokenizer")}
    return save(model, out, meta, overwrite=overwrite)   # with the tokenizer, re-serialized

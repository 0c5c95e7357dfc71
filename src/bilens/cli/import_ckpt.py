"""`bilens import SRC --out DIR`: convert a published bilinear transformer into SPEC §9."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="convert a published bilinear-transformer checkpoint to SPEC §9",
        description="Convert a published bilinear-transformer directory (HF-style config.json "
                    "and model.safetensors, as released by Pearce, Dooms et al.) into a SPEC §9 "
                    "checkpoint, exactly; a tokenizer.json beside it is copied. Gated, biased "
                    "or non-bilinear models and pickled weights are refused.")
    p.add_argument("source", metavar="SRC", help="the published checkpoint directory")
    p.add_argument("--out", required=True, help="the new checkpoint directory")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bilens.core.checkpoint import CONFIG_FILE, check_replaceable, load
    from bilens.core.errors import BilensError
    from bilens.core.published import import_published

    if (Path(args.out) / CONFIG_FILE).exists() and not args.force:
        raise BilensError(f"--out: {args.out!r} already holds a checkpoint; choose a new "
                          f"directory or pass --force to replace it")
    check_replaceable(args.out)
    out = import_published(args.source, args.out)
    model = load(out)
    cfg = model.config
    print(f"imported {cfg.n_layers} layers, d_model {cfg.d_model}, d_hidden {cfg.d_hidden}, "
          f"{cfg.n_heads} heads, vocab {cfg.vocab_size}, norm {cfg.norm} ({cfg.norm_position})"
          f", tokenizer {'yes' if model.tokenizer is not None else 'none'}")
    print(f"checkpoint: {out}")
    return 0

"""`bilens import SRC --out DIR`: convert a published bilinear transformer into docs/spec.md §9."""

from __future__ import annotations

import argparse

from bilens.cli._common import add_force, add_out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="convert a published bilinear-transformer checkpoint to docs/spec.md §9",
        description="Convert a published bilinear-transformer directory (HF-style config.json "
                    "and model.safetensors, as released by Pearce, Dooms et al.) into a "
                    "docs/spec.md §9 checkpoint, exactly; a tokenizer.json beside it is copied. "
                    "Gated, biased or non-bilinear models and pickled weights are refused.")
    p.add_argument("source", metavar="SRC", help="the published checkpoint directory")
    add_out(p, "the new checkpoint directory", metavar="DIR")
    add_force(p, "an existing checkpoint at --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilens.core.checkpoint import check_replaceable, load
    from bilens.core.published import import_published

    check_replaceable(args.out, args.force)             # before any work
    out = import_published(args.source, args.out, overwrite=args.force)
    model = load(out)
    cfg = model.config
    print(f"imported {cfg.n_layers} layers, d_model {cfg.d_model}, d_hidden {cfg.d_hidden}, "
          f"{cfg.n_heads} heads, vocab {cfg.vocab_size}, norm {cfg.norm} ({cfg.norm_position})"
          f", tokenizer {'yes' if model.tokenizer is not None else 'none'}")
    print(f"checkpoint: {out}")
    return 0

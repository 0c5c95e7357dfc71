"""`bilens info DIR`: print a checkpoint's config, parameter count and metadata (and for a
transformer its kind, tensor shapes, tokenizer and `val_loss`)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config, parameters and metadata",
                       description="Print a checkpoint's model config, parameter count and "
                                   "metadata (after checking every tensor).")
    p.add_argument("directory", metavar="DIR", help="checkpoint directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--history", action="store_true", help="also print the per-epoch history")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilens.core.checkpoint import describe, load

    info = describe(load(args.directory))
    if not args.history:
        info["metadata"] = {k: v for k, v in info["metadata"].items() if k != "history"}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"checkpoint {args.directory}")
    print("config:")
    for key, value in info["config"].items():
        print(f"  {key}: {value}")
    print(f"parameters: {info['n_params']:,} ({info['dtype']})")
    if info.get("kind") == "transformer":
        _print_transformer(info)
    meta = info["metadata"]
    print("metadata:" if meta else "metadata: (none)")
    for key, value in meta.items():
        if isinstance(value, dict):
            print(f"  {key}:")
            for k, v in value.items():
                print(f"    {k}: {v}")
        elif isinstance(value, list):
            print(f"  {key}: [{len(value)} entries]" if not args.history else f"  {key}:")
            if args.history:
                for entry in value:
                    print(f"    {entry}")
        else:
            print(f"  {key}: {value}")
    return 0


def _print_transformer(info: dict) -> None:
    loss = info["val_loss"]
    base = info["metadata"].get("baselines", {})
    print("kind: transformer (docs/spec.md §9)")
    print(f"tokenizer: {info['tokenizer'] or 'none (token ids only)'}")
    if loss is None:
        print("val_loss: (not recorded)")
    else:
        extra = ", ".join(f"{k.removesuffix('_loss')} {v:.4f}" for k, v in base.items()
                          if k.endswith("_loss"))
        print(f"val_loss: {loss:.4f} nats" + (f" (baselines: {extra})" if extra else ""))
    print("tensors:")
    for name, shape in info["shapes"].items():
        print(f"  {name}: {shape}")

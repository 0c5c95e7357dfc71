"""`bilens sample DIR --prompt TEXT --tokens N`: continue a prompt with a sequence model."""

from __future__ import annotations

import argparse

from bilens.cli._common import add_seed, count


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="continue a prompt with a transformer checkpoint",
                       description="Print a transformer checkpoint's continuation of a prompt "
                                   "(greedy by default, or sampled with --temperature).")
    p.add_argument("directory", metavar="DIR", help="checkpoint directory (kind transformer)")
    p.add_argument("--prompt", default=None, help="text to continue (tokenized with the "
                                                  "checkpoint's tokenizer)")
    p.add_argument("--ids", default=None,
                   help="comma-separated token ids instead of text (e.g. for synthetic-lm)")
    p.add_argument("--tokens", type=count, default=50, help="tokens to add")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy; > 0: sample from softmax(logits / temperature)")
    add_seed(p, "the sampling (with --temperature > 0)", default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from bilens.core.checkpoint import load
    from bilens.core.errors import BilensError
    from bilens.core.models.transformer import BilinearTransformer
    from bilens.core.sampling import continue_text, generate

    model = load(args.directory)
    if not isinstance(model, BilinearTransformer):
        raise BilensError(f"sample: {args.directory!r} is an MLP checkpoint; sample needs a "
                          f"transformer (bilens train --kind transformer)")
    if (args.prompt is None) == (args.ids is None):
        raise BilensError("sample: pass exactly one of --prompt TEXT or --ids 1,2,3")
    if args.prompt is not None:
        print(args.prompt + continue_text(model, args.prompt, args.tokens, args.temperature,
                                          args.seed))
        return 0
    try:
        ids = [int(i) for i in args.ids.split(",") if i.strip()]
    except ValueError as err:
        raise BilensError(f"--ids: expected comma-separated integers, got {args.ids!r}") from err
    if not ids:
        raise BilensError("--ids: empty; pass at least one token id")
    out = generate(model, torch.tensor([ids]), args.tokens, args.temperature, args.seed)
    print(",".join(str(i) for i in out[0].tolist()))
    return 0

"""`bilens train --kind transformer`: train a bilinear transformer (docs/spec.md §9) and
write its checkpoint (config.json, model.safetensors, tokenizer.json) atomically. Under
torchrun it trains with DDP (docs/distributed.md); rank 0 alone evaluates, writes and prints."""

from __future__ import annotations

import argparse
from pathlib import Path

from bilens.cli._common import count, setup_threads
from bilens.training.lm import LMTrainConfig

_LM = LMTrainConfig()
LM_DEFAULTS = {"lr": _LM.lr, "batch_size": _LM.batch_size}
SEQ_LEN = {"synthetic-lm": 32}          # the default --seq-len per dataset (else 128)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options only the transformer reads (the shared ones live in cli/train.py)."""
    g = p.add_argument_group("transformer (--kind transformer)")
    g.add_argument("--heads", type=count, default=2, help="attention heads per layer")
    g.add_argument("--seq-len", type=count, default=None,
                   help="tokens per training row, also n_ctx (synthetic-lm: 32, else 128)")
    g.add_argument("--steps", type=count, default=_LM.steps, help="optimizer steps")
    g.add_argument("--vocab-size", type=count, default=4096,
                   help="BPE vocabulary trained on the text's training split")
    g.add_argument("--attn-scale", type=float, default=1.0, help="alpha on every attention "
                                                                 "output")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")


def run_lm(args: argparse.Namespace) -> int:

    from bilens.core import distributed
    from bilens.core.checkpoint import check_replaceable, save
    from bilens.core.config import TransformerConfig
    from bilens.core.errors import BilensError
    from bilens.core.lm_data import load_lm_data
    from bilens.training.lm import train_lm

    setup_threads(args)
    dataset = args.dataset or "synthetic-lm"
    seq_len = args.seq_len or SEQ_LEN.get(dataset, 128)
    name = Path(dataset).stem if Path(dataset).is_file() else dataset
    out = Path(args.out or f"runs/{name}-{args.norm}-{args.position or 'pre'}-s{args.seed}")
    if args.input_noise:
        raise BilensError("--input-noise: the transformer reads token ids, there is no input "
                          "to add noise to; drop --input-noise")
    if args.fixed_gain or args.n_train is not None:
        raise BilensError("--fixed-gain / --n-train: options of --kind mlp; the transformer "
                          "learns its norms' gains and trains on the whole training split")
    check_replaceable(out, args.force)                          # before training, not after
    tc = LMTrainConfig(
        steps=args.steps, batch_size=args.batch_size or LM_DEFAULTS["batch_size"],
        lr=LM_DEFAULTS["lr"] if args.lr is None else args.lr, weight_decay=args.weight_decay,
        warmup=args.warmup, grad_clip=args.grad_clip, seed=args.seed, device=args.device,
        bf16=args.bf16, l1=args.l1)
    data = load_lm_data(dataset, seq_len, vocab_size=args.vocab_size, seed=args.seed)
    seq_len = data.test.shape[1] - 1                           # token rows fix their length
    config = TransformerConfig(
        vocab_size=data.vocab_size, n_ctx=seq_len, d_model=args.d_model,
        d_hidden=args.d_hidden, n_layers=args.layers, n_heads=args.heads, norm=args.norm,
        norm_position=args.position or "pre", eps=args.eps, attn_scale=args.attn_scale)
    result = train_lm(config, tc, data, progress=not args.no_progress)
    distributed.agree()                             # every rank trained; rank 0 writes
    if distributed.is_main():
        save(result.model, out, result.metadata, overwrite=args.force)
    distributed.agree()                             # the others wait for the checkpoint
    if not distributed.is_main():
        return 0
    base = result.baselines
    print(f"held-out loss {result.val_loss:.4f} nats (perplexity {result.perplexity:.2f}); "
          f"unigram {base['unigram']:.4f}, bigram {base['bigram']:.4f}; "
          f"next-token accuracy {result.accuracy:.4f}")
    for rule, acc in result.rule_accuracy.items():
        print(f"  accuracy on {rule} positions: {acc:.4f}")
    print(f"{tc.steps} steps in {result.wall_time:.1f} s "
          f"({result.tokens_per_second:,.0f} tokens/s)")
    print(f"checkpoint: {out}")
    return 0

"""`bilens verify DIR` for a sequence model (a checkpoint whose `config.json` says
`kind: "transformer"`): every node's attribution against the exact oracle (docs/spec.md §9).

    bilens verify runs/lm --tokens tokens.safetensors --n 16 --seq-len 32 --target next \\
        --modes frozen,frozen-norm,live,renorm --out out/verify-lm

`--tokens FILE` is a safetensors file holding `tokens [N, T]` (int64; for `next` and
`mean-logprob` the last token is read only as the next token); without it the tokens come
from `--dataset` (`core.data`, once it serves token sequences). Writes what the MLP verify
writes (results.safetensors, metrics.json, summary.md, PNGs), atomically.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bilens.core.errors import BilensError


def is_sequence_checkpoint(directory: str) -> bool:
    """True when `DIR/config.json` names the transformer kind (docs/spec.md §9)."""
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text()).get("kind") == "transformer"
    except (OSError, ValueError, AttributeError):
        return False


def load_transformer(directory: str, float64: bool):
    """The checkpoint's `BilinearTransformer`: through `bilens.load` when it reads this kind,
    else straight from `config.json` and `model.safetensors` (docs/spec.md §9 tensor names)."""
    import torch
    from safetensors.torch import load_file

    import bilens
    from bilens.core.config import TransformerConfig
    from bilens.core.models.transformer import BilinearTransformer

    dtype = torch.float64 if float64 else None
    try:
        model = bilens.load(directory, dtype=dtype)
        if isinstance(model, BilinearTransformer):
            return model
    except BilensError:
        pass
    root = Path(directory)
    raw = json.loads((root / "config.json").read_text())
    model = BilinearTransformer(TransformerConfig.from_dict(raw))
    tensors = load_file(str(root / "model.safetensors"))
    missing = sorted(set(model.state_dict()) - set(tensors))
    if missing:
        raise BilensError(f"checkpoint: {directory!r} lacks {missing[:3]}... (docs/spec.md "
                          f"§9 names)")
    model.load_state_dict(tensors, strict=True)
    model.metadata = {k: v for k, v in raw.items() if k not in TransformerConfig.__annotations__}
    return model.to(dtype or torch.float32).eval()


def load_tokens(args: argparse.Namespace, model, extra: int):
    """`[n, seq_len + extra]` token ids from `--tokens` or `--dataset`."""
    import torch

    if args.tokens:
        from safetensors.torch import load_file

        try:
            tokens = load_file(args.tokens)["tokens"]
        except (OSError, KeyError, Exception) as err:
            raise BilensError(f"--tokens: cannot read `tokens` from {args.tokens!r} ({err}); "
                              f"write one with safetensors.torch.save_file({{'tokens': t}}, "
                              f"FILE)") from None
    else:
        from bilens.core.lm_data import load_lm_data

        name = args.dataset or model.metadata.get("dataset")
        if name is None:
            raise BilensError("--tokens/--dataset: pass a tokens file or a token dataset")
        data = load_lm_data(name, args.seq_len or model.config.n_ctx, tokenizer=model.tokenizer,
                            vocab_size=model.config.vocab_size, seed=args.seed)
        split = args.split or "test"
        rows = data.test if split == "test" else data.train
        if rows.ndim != 2:
            raise BilensError(f"--split {split}: {name!r} holds one token stream there; "
                              f"verify reads the held-out rows (--split test)")
        tokens = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(
            args.seed))[: args.n].sort().values]
    tokens = torch.as_tensor(tokens).long()[: args.n]
    if args.seq_len is not None:
        if tokens.shape[1] < args.seq_len + extra:
            raise BilensError(f"--seq-len: {args.seq_len} (+{extra} next token) exceeds the "
                              f"{tokens.shape[1]} tokens per sequence in the data")
        tokens = tokens[:, : args.seq_len + extra]
    return tokens


def run_sequence(args: argparse.Namespace) -> int:
    """The sequence-model path of `bilens verify` (options validated before any work)."""
    from bilens.analysis.verify import check_replaceable
    from bilens.attribution.sequence import SEQUENCE_MODES, check_sequence_mode
    from bilens.core.memory import parse_memory
    from bilens.core.sequence import NEEDS_NEXT

    modes = ([check_sequence_mode(m.strip(), "--modes") for m in args.modes.split(",")
              if m.strip()] if args.modes else list(SEQUENCE_MODES))
    if args.n < 1:
        raise BilensError(f"--n: expected a positive number of sequences, got {args.n}")
    out = Path(args.out)
    check_replaceable(out, args.force)
    parse_memory(args.memory)
    if args.baseline != "zero":
        raise BilensError("--baseline: a sequence model's verify takes zero here; for a mean "
                          "baseline use bilens.verify(..., baselines='mean', reference=tokens)")
    ks = [int(k) for k in args.circuit_ks.split(",") if k.strip()] if args.circuit_ks else []
    layers = ([int(v) for v in args.layers.split(",") if v.strip()]
              if args.layers else None)
    from bilens import report
    from bilens.analysis.verify_sequence import verify_sequence
    from bilens.cli._common import rank_device
    from bilens.core import distributed

    model = load_transformer(args.checkpoint, args.float64)
    tokens = load_tokens(args, model, int(args.target in NEEDS_NEXT))
    device = rank_device(getattr(args, "device", "cpu"))
    model, tokens = model.to(device), tokens.to(device)
    start = time.perf_counter()
    result = verify_sequence(model, tokens, target=args.target, position=args.position,
                             baselines=args.baseline, modes=modes, layers=layers,
                             circuit_ks=ks, memory=args.memory, backend=args.backend,
                             precision=args.precision, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    world = distributed.world()
    result.metrics["info"].update(
        checkpoint=str(args.checkpoint), seconds=round(seconds, 2), tokens=args.tokens,
        dataset=args.dataset, world_size=world.world_size if world.active else 1,
        split="node-ablation batches ((l, t), rows, channels) by estimated cost (LPT)")
    if not distributed.is_main():
        distributed.agree()                          # rank 0 writes; wait for its verdict
        return 0
    report.save_verify(result, out, plots=not args.no_plots, overwrite=args.force,
                       command=report.command_line(), before_commit=distributed.agree)
    print(report.verify_table(result))
    print(f"\nwrote {out}/ in {seconds:.1f} s")
    return 0

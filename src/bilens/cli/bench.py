"""`bilens bench`: attribution and exhaustive ablation, timed side by side against one forward
pass, captum and a plain per-channel hook loop, with agreement checked first.

    bilens bench --quick --out bench.json                   # CPU-sized, under a minute
    bilens bench --device cuda --n 10000 --d-hidden 1024 --precision 3xtf32 --backend triton
    bilens bench --kind transformer --quick                 # the node oracle, CPU-sized
    bilens bench --kind transformer --device cuda --backend triton --memory 80GiB
"""

from __future__ import annotations

import argparse

from bilens.cli._common import add_device, add_force, add_out, add_threads, count


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="time attribution and exhaustive ablation against captum and a loop",
        description="Time attribution (frozen, live) and exhaustive ablation on one model and "
                    "one set of inputs, against one forward pass, captum and a per-channel "
                    "hook loop; print the ratios, agreement and peak memory.")
    p.add_argument("--kind", default="mlp", choices=("mlp", "transformer"),
                   help="mlp: the MLP classifier; transformer: the bilinear transformer's node "
                        "attribution and exact node oracle, target next at the last position "
                        "(default: mlp)")
    p.add_argument("--quick", action="store_true",
                   help="a CPU-sized set: 32 inputs, 4 layers x 256 channels, d_model 128, "
                        "5 repeats (transformer: 8 sequences of 32 tokens, 2 layers x 128 "
                        "channels, d_model 64)")
    add_out(p, "write the results as JSON to FILE", metavar="FILE", unset="print only")
    add_force(p, "an earlier JSON at --out")
    add_device(p)
    p.add_argument("--n", type=count,
                   help="number of inputs (default: 10000; quick 32; transformer: sequences, "
                        "128, quick 8)")
    p.add_argument("--layers", type=count, help="bilinear layers (default: 4)")
    p.add_argument("--d-model", type=count, help="residual width (default: 256; quick 128)")
    p.add_argument("--d-hidden", type=count,
                   help="channels per layer (default: 1024; quick 256)")
    p.add_argument("--norm", default="rms", help="none | rms | layer (default: rms)")
    p.add_argument("--position", default=None,
                   help="post | pre (default: post; transformer: pre)")
    p.add_argument("--memory", default=None,
                   help="ablation working-memory budget (default: 4GiB; transformer: 16GiB, "
                        "quick 1GiB)")
    p.add_argument("--heads", type=count, help="transformer: attention heads (default: 4)")
    p.add_argument("--seq-len", type=count,
                   help="transformer: tokens per sequence (default: 64; quick 32)")
    p.add_argument("--every", type=count,
                   help="transformer: the subset's positions, every k-th of layer 0 (default: "
                        "8; quick 1)")
    p.add_argument("--no-full", action="store_true",
                   help="transformer: skip the every-node oracle run (the check and the "
                        "subset only)")
    p.add_argument("--precision", default="fp32",
                   help="fp32 | 3xtf32 | 3xfp16 (CUDA matmuls); a comma list times each")
    p.add_argument("--backend", default="eager", choices=("eager", "compile", "triton"),
                   help="how the ablation runs on CUDA: eager, compiled elementwise steps, or "
                        "Triton GEMMs (default: eager; fp32 rows use compile under triton)")
    p.add_argument("--data", default="random",
                   help="random, or a dataset whose test inputs to use (e.g. mnist)")
    p.add_argument("--ppe", default=None,
                   help="captum perturbations_per_eval to try, e.g. 16,64,256 (best is kept)")
    p.add_argument("--repeats", type=count, default=None,
                   help="timed calls per fast row (default: 3; quick 5)")
    add_threads(p, unset="1 with --quick on a CPU, where other jobs share the cores; else "
                         "torch's choice")
    p.add_argument("--no-captum", action="store_true", help="skip the captum rows")
    p.add_argument("--no-loop", action="store_true", help="skip the hook-loop row")
    p.set_defaults(func=run)


def _run_kind(args: argparse.Namespace, over: dict) -> dict:
    """The bench of `--kind`, with the options that kind takes."""
    from bilens.core.errors import BilensError

    lm_only = {"--heads": args.heads, "--seq-len": args.seq_len, "--every": args.every,
               "--no-full": args.no_full or None}
    if args.kind == "mlp":
        from bilens.experiments.bench import BenchConfig, run_bench

        given = [k for k, v in lm_only.items() if v is not None]
        if given:
            raise BilensError(f"{given[0]}: a transformer option; pass --kind transformer")
        cfg = BenchConfig.quick(**over, data=args.data) if args.quick else BenchConfig(
            **over, data=args.data)
        return run_bench(cfg)
    from bilens.experiments.bench_lm import LMBenchConfig, run_lm_bench

    if args.data != "random":
        raise BilensError("--data: not used by --kind transformer (it times random token "
                          "sequences)")
    over.update({k: v for k, v in (("n_heads", args.heads), ("seq_len", args.seq_len),
                                   ("every", args.every)) if v is not None},
                full=not args.no_full)
    return run_lm_bench(LMBenchConfig.quick(**over) if args.quick else LMBenchConfig(**over))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from bilens.core.errors import BilensError
    from bilens.experiments.bench import write_json

    if args.out and Path(args.out).exists() and not args.force:
        raise BilensError(f"--out: {args.out!r} exists; pass --force to replace it")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif args.quick and args.device == "cpu":
        torch.set_num_threads(1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BilensError("--device cuda: no CUDA device is visible; use --device cpu")
    over = {k: v for k, v in {
        "n": args.n, "n_layers": args.layers, "d_model": args.d_model,
        "d_hidden": args.d_hidden, "repeats": args.repeats}.items() if v is not None}
    if args.ppe:
        try:
            over["ppe"] = tuple(int(p) for p in args.ppe.split(","))
        except ValueError:
            raise BilensError(f"--ppe: expected integers like 16,64,256, got {args.ppe!r}") \
                from None
    from bilens.ablation import PRECISIONS
    for prec in args.precision.split(","):
        if prec not in PRECISIONS:
            raise BilensError(f"--precision: expected one of {', '.join(PRECISIONS)} (or a "
                              f"comma list of them), got {prec!r}")
    over.update(norm=args.norm, device=args.device, precision=args.precision,
                backend=args.backend, captum=not args.no_captum, loop=not args.no_loop,
                **{k: v for k, v in (("position", args.position), ("memory", args.memory))
                   if v is not None})
    res = _run_kind(args, over)
    if args.out:
        write_json(res, args.out)
        print(f"wrote {args.out}")
    return 0

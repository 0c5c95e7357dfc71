"""`bilens verify`: check every channel's attribution against its real ablation (docs/spec.md §8).

    bilens verify runs/mnist-rms-post --dataset mnist --split test --n 256 \\
        --modes frozen,live --out out/verify-mnist

writes `OUTDIR/results.safetensors` and `metrics.json` (docs/spec.md §7), `summary.md` and PNG
plots, all at once (a temporary directory renamed into place; Ctrl-C leaves nothing), and
prints the metrics table.

    torchrun --nproc-per-node 4 -m bilens verify ... --device cuda --out OUTDIR

splits the exhaustive ablation over the ranks (docs/distributed.md); rank 0 alone prints
and writes, once every rank has agreed that it succeeded.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from bilens.cli._common import add_force, add_out, count, rank_device, seed, setup_threads
from bilens.cli._inputs import add_input_arguments, check_baseline, load_inputs, parse_modes
from bilens.core.errors import BilensError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="check attributions against real ablations (metrics, plots)",
        description="Ablate every channel on N inputs in the real network and with frozen "
                    "norms, compare with the attribution of each mode (docs/spec.md §5), and write "
                    "results.safetensors, metrics.json, summary.md and PNGs to --out.")
    add_input_arguments(p, n_default=256, n_help="number of inputs, a seeded subset",
                        device_note="; under torchrun cuda means each rank's GPU LOCAL_RANK")
    p.add_argument("--modes", default=None,
                   help="comma-separated attribution modes (default: all three, "
                        "frozen,live,renorm; for a sequence model all four, "
                        "frozen,frozen-norm,live,renorm)")
    p.add_argument("--tokens", default=None, metavar="FILE",
                   help="sequence models: a safetensors file with tokens [N, T] (default: none)")
    p.add_argument("--position", type=seed, default=None,
                   help="sequence models: the target position p (default: the last)")
    p.add_argument("--seq-len", type=count, default=None,
                   help="sequence models: tokens read per sequence (default: all)")
    p.add_argument("--layers", default=None,
                   help="layers to ablate, e.g. 0,3 (default: all; the others are NaN)")
    p.add_argument("--circuit-ks", default="1,2,4,8,16,32,64",
                   help="circuit sizes of the faithfulness curve, '' to skip")
    p.add_argument("--memory", default="4GiB", help="ablation working-memory budget")
    p.add_argument("--backend", default=None, choices=("eager", "compile", "triton"),
                   help="how the ablation runs (default: eager; compile and triton need CUDA; "
                        "for a sequence model triton also runs renorm's closed form)")
    p.add_argument("--precision", default=None, choices=("fp32", "3xtf32", "3xfp16"),
                   help="the ablation's large products (default: fp32; 3xfp16 under triton)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--csv", metavar="FILE", default=None,
                   help="also write a tidy CSV, one row per (input, layer, channel): activation, "
                        "predicted_<mode> per mode, actual, actual_frozen_norm (default: none)")
    add_out(p, "output directory", metavar="OUTDIR")
    add_force(p, "an earlier verify output at --out (and the --csv file)")
    p.set_defaults(func=run)


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise BilensError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    return values


def run(args: argparse.Namespace) -> int:
    from bilens.cli.verify_sequence import is_sequence_checkpoint, run_sequence

    if args.tokens or is_sequence_checkpoint(args.checkpoint):
        return run_sequence(args)
    modes, layers, ks, out = _validate(args)        # everything cheap, before any loading
    import torch

    from bilens import report
    from bilens.analysis.verify import verify
    from bilens.core import distributed
    from bilens.core.memory import parse_memory

    parse_memory(args.memory)
    setup_threads(args)
    device = rank_device(args.device)
    model, dataset, data, reference = load_inputs(args)
    model.to(device)

    start = time.perf_counter()
    result = verify(model, data.x, target=args.target, modes=modes, baselines=args.baseline,
                    labels=data.y, reference=reference, layers=layers, circuit_ks=ks,
                    memory=args.memory, backend=args.backend, precision=args.precision,
                    progress=not args.no_progress)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        logits = model(data.x.to(device, model.dtype))
    result.metrics["info"].update(
        checkpoint=str(args.checkpoint), dataset=dataset, split=data.split, seed=args.seed,
        accuracy=None if data.y is None else
        (logits.argmax(-1).cpu() == data.y).double().mean().item(),
        seconds=round(seconds, 2))
    if not distributed.is_main():
        distributed.agree()                          # rank 0 writes; wait for its verdict
        return 0
    report.save_verify(result, out, plots=not args.no_plots, overwrite=args.force,
                       command=_command(args, dataset, modes), before_commit=distributed.agree)
    print(report.verify_table(result))
    print(f"\nwrote {out}/ (results.safetensors, metrics.json, summary.md"
          f"{'' if args.no_plots else ', PNGs'}) in {seconds:.1f} s")
    if args.csv is not None:
        from bilens.analysis.export import write_csv

        rows = write_csv(result, args.csv, overwrite=args.force)
        print(f"wrote {args.csv} ({rows} rows: input, layer, channel)")
    return 0


def _validate(args: argparse.Namespace) -> tuple[list[str], list[int] | None, list[int], Path]:
    """The modes, layers, circuit sizes and output directory, checked before any work."""
    from bilens.analysis.export import check_csv
    from bilens.analysis.verify import check_replaceable

    args.modes = args.modes or "frozen,live,renorm"
    modes = parse_modes(args.modes, "--modes")
    check_baseline(args)
    layers = _ints(args.layers, "--layers")
    ks = _ints(args.circuit_ks, "--circuit-ks") or []
    if any(k < 1 for k in ks):
        raise BilensError(f"--circuit-ks: sizes must be >= 1, got {args.circuit_ks!r}")
    out = Path(args.out)
    check_replaceable(out, args.force)
    if args.csv is not None:
        check_csv(args.csv, args.force)
    return modes, layers, ks, out


def _command(args: argparse.Namespace, dataset: str, modes: list[str]) -> str:
    """The command line that reproduces this run (for summary.md)."""
    from bilens.core.data import is_file

    parts = ["bilens", "verify", args.checkpoint, "--dataset", dataset]
    if args.split is not None or not is_file(dataset):
        parts += ["--split", args.split or "test"]
    parts += ["--n", str(args.n), "--seed", str(args.seed), "--modes", ",".join(modes),
             "--target", args.target, "--baseline", args.baseline]
    if args.baseline == "mean":
        parts += ["--reference-n", str(args.reference_n)]
    if args.layers is not None:
        parts += ["--layers", args.layers]
    parts += ["--circuit-ks", args.circuit_ks]
    if args.float64:
        parts.append("--float64")
    parts += ["--out", args.out]
    return " ".join(shlex.quote(str(p)) for p in parts)

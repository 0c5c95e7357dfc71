"""`bilens verify`: check every channel's attribution against its real ablation (SPEC §8).

    bilens verify runs/mnist-rms-post --dataset mnist --split test --n 256 \\
        --modes frozen,live --out out/verify-mnist

writes `OUTDIR/results.safetensors` and `metrics.json` (SPEC §7), `summary.md` and PNG
plots, all at once (a temporary directory renamed into place; Ctrl-C leaves nothing), and
prints the metrics table.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from bilens.errors import BilensError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="check attributions against real ablations (metrics, plots)",
        description="Ablate every channel on N inputs in the real network and with frozen "
                    "norms, compare with the attribution of each mode (SPEC §5), and write "
                    "results.safetensors, metrics.json, summary.md and PNGs to --out.")
    p.add_argument("checkpoint", metavar="DIR", help="checkpoint directory (bilens train --out)")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--split", default="test", help="train | test (default test)")
    p.add_argument("--n", type=int, default=256, help="number of inputs (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the input subset (default 0)")
    p.add_argument("--modes", default="frozen,live", help="comma-separated (default frozen,live)")
    p.add_argument("--target", default="predicted",
                   help="predicted | label | logprob | class:C | diff:C1,C2 (default predicted)")
    p.add_argument("--baseline", default="zero", help="zero | mean (default zero)")
    p.add_argument("--reference-n", type=int, default=1000,
                   help="training inputs whose mean activation is the 'mean' baseline")
    p.add_argument("--layers", default=None,
                   help="layers to ablate, e.g. 0,3 (default all; others are NaN)")
    p.add_argument("--circuit-ks", default="1,2,4,8,16,32,64",
                   help="circuit sizes of the faithfulness curve ('' to skip)")
    p.add_argument("--memory", default="4GiB", help="ablation working-memory budget")
    p.add_argument("--float64", action="store_true", help="compute in float64")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, metavar="OUTDIR", help="output directory")
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
    # ---- validate everything cheap before loading anything ----
    from bilens.backward import MODES

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise BilensError(f"--modes: expected a comma-separated subset of {','.join(MODES)}, "
                          f"got {args.modes!r}")
    if args.baseline not in ("zero", "mean"):
        raise BilensError(f"--baseline: expected zero or mean, got {args.baseline!r}")
    if args.n < 1:
        raise BilensError(f"--n: expected a positive number of inputs, got {args.n}")
    layers = _ints(args.layers, "--layers")
    ks = _ints(args.circuit_ks, "--circuit-ks") or []
    if any(k < 1 for k in ks):
        raise BilensError(f"--circuit-ks: sizes must be >= 1, got {args.circuit_ks!r}")
    out = Path(args.out)
    from bilens.verify import replaceable

    if not replaceable(out):
        raise BilensError(f"--out: {str(out)!r} exists and is not a bilens verify output; "
                          f"choose a new directory (it would be replaced)")

    import torch

    import bilens
    from bilens.ablation import parse_memory
    from bilens.verify import verify

    parse_memory(args.memory)
    model = bilens.load(args.checkpoint, dtype=torch.float64 if args.float64 else None)
    dataset = args.dataset or getattr(model, "metadata", {}).get("dataset")
    if dataset is None:
        raise BilensError("--dataset: the checkpoint records no dataset; pass --dataset NAME")
    data = bilens.load_dataset(dataset, args.split, n=args.n, seed=args.seed)
    if data.d_in != model.config.d_in:
        raise BilensError(f"--dataset: {dataset} inputs have width {data.d_in} but the model "
                          f"expects {model.config.d_in}; pass the dataset it was trained on")
    reference = None
    if args.baseline == "mean":
        reference = bilens.load_dataset(dataset, "train", n=args.reference_n, seed=args.seed).x

    start = time.perf_counter()
    result = verify(model, data.x, target=args.target, modes=modes, baseline=args.baseline,
                    labels=data.y, reference=reference, layers=layers, circuit_ks=ks,
                    memory=args.memory, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        logits = model(data.x.to(model.dtype))
    result.metrics["info"].update(
        checkpoint=str(args.checkpoint), dataset=dataset, split=args.split, seed=args.seed,
        accuracy=(logits.argmax(-1).cpu() == data.y).double().mean().item(),
        seconds=round(seconds, 2))
    result.extra["command"] = _command(args, dataset, modes)
    result.save(out, plots=not args.no_plots)
    print(result.table())
    print(f"\nwrote {out}/ (results.safetensors, metrics.json, summary.md"
          f"{'' if args.no_plots else ', PNGs'}) in {seconds:.1f} s")
    return 0


def _command(args: argparse.Namespace, dataset: str, modes: list[str]) -> str:
    """The command line that reproduces this run (for summary.md)."""
    parts = ["bilens", "verify", args.checkpoint, "--dataset", dataset, "--split", args.split,
             "--n", str(args.n), "--seed", str(args.seed), "--modes", ",".join(modes),
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

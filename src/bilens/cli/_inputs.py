"""What `bilens attribute` and `bilens verify` share: the options that choose a checkpoint,
its inputs and the baseline, and loading them. One copy, so the two commands always feed
the same model the same inputs and the same mean-baseline reference."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bilens.cli._common import add_device, add_float64, add_seed, add_threads, count
from bilens.core.errors import BilensError

if TYPE_CHECKING:
    from torch import Tensor

    from bilens.core.data import Dataset
    from bilens.core.models.mlp import BilinearNet


def add_input_arguments(p: argparse.ArgumentParser, n_default: int, n_help: str,
                        device_note: str = "") -> None:
    """The checkpoint, dataset subset, target, baseline, device and precision options."""
    p.add_argument("checkpoint", metavar="DIR", help="checkpoint directory (bilens train --out)")
    p.add_argument("--dataset", metavar="NAME|FILE",
                   help="a dataset name, or your own FILE.npz|.safetensors|.pt holding x "
                        "[N, d_in] and optionally y [N] (docs/training.md) (default: the "
                        "checkpoint's)")
    p.add_argument("--split", default=None, choices=("train", "test"),
                   help="which split (default: test; with a FILE every row, and train|test "
                        "the seeded split bilens train used)")
    p.add_argument("--n", type=count, default=n_default, help=n_help)
    add_seed(p, "the input subset")
    p.add_argument("--target", default="predicted",
                   help="predicted | label | logprob | class:C | diff:C1,C2 (default: predicted;"
                        " label and logprob need labels)")
    p.add_argument("--baseline", default="zero", help="zero | mean (default: zero)")
    p.add_argument("--reference-n", type=count, default=1000,
                   help="training inputs whose mean activation is the 'mean' baseline")
    add_float64(p)
    add_device(p, note=device_note)
    add_threads(p)


def parse_modes(text: str, flag: str) -> list[str]:
    """`"frozen,live"` -> `["frozen", "live"]`, each a known attribution mode."""
    from bilens.attribution.backward import MODES

    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise BilensError(f"{flag}: expected a comma-separated subset of {','.join(MODES)} "
                          f"(e.g. frozen,live), got {text!r}")
    return modes


def check_baseline(args: argparse.Namespace) -> None:
    if args.baseline not in ("zero", "mean"):
        raise BilensError(f"--baseline: expected zero or mean, got {args.baseline!r}")


def load_inputs(args: argparse.Namespace) -> tuple[BilinearNet, str, Dataset, Tensor | None]:
    """The model, its dataset's name (or file), the seeded input subset, and for `--baseline
    mean` the seeded subset of training inputs whose mean activation is the baseline (else
    None). Without labels (a file with no `y`), `label` and `logprob` targets are refused."""
    import torch

    import bilens
    from bilens.core.data import DEFAULT_TEST_FRACTION, is_file, load_file

    model = bilens.load(args.checkpoint, dtype=torch.float64 if args.float64 else None)
    meta = getattr(model, "metadata", {}) or {}
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise BilensError("--dataset: the checkpoint records no dataset; pass --dataset NAME "
                          "or --dataset FILE")
    reference = None
    if is_file(dataset):
        fraction = meta.get("test_fraction", DEFAULT_TEST_FRACTION)
        data = load_file(dataset, args.split, n=args.n, seed=args.seed, d_in=model.config.d_in,
                         n_classes=model.config.n_out, test_fraction=fraction)
        if args.baseline == "mean":
            reference = load_file(dataset, "train" if args.split else None, seed=args.seed,
                                  test_fraction=fraction, d_in=model.config.d_in).x
            reference = reference[:args.reference_n]
    else:
        data = bilens.load_dataset(dataset, args.split or "test", n=args.n, seed=args.seed)
        if data.d_in != model.config.d_in:
            raise BilensError(f"--dataset: {dataset} inputs have width {data.d_in} but the "
                              f"model expects {model.config.d_in}; pass the dataset it was "
                              f"trained on")
        if args.baseline == "mean":
            reference = bilens.load_dataset(dataset, "train", n=args.reference_n,
                                            seed=args.seed).x
    target = str(args.target)
    if data.y is None and (target in ("label", "logprob")):
        raise BilensError(f"--target {target}: {dataset} holds no labels (no array 'y'); "
                          f"use --target predicted, class:C or diff:C1,C2, or add y to the file")
    return model, dataset, data, reference

"""What `bilens attribute` and `bilens verify` share: the options that choose a checkpoint,
its inputs and the baseline, and loading them. One copy, so the two commands always feed
the same model the same inputs and the same mean-baseline reference."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bilens.core.errors import BilensError

if TYPE_CHECKING:
    from torch import Tensor

    from bilens.core.data import Dataset
    from bilens.core.models.mlp import BilinearNet


def add_input_arguments(p: argparse.ArgumentParser, n_default: int, n_help: str) -> None:
    """The checkpoint, dataset subset, target, baseline and precision options."""
    p.add_argument("checkpoint", metavar="DIR", help="checkpoint directory (bilens train --out)")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--split", default="test", help="train | test (default test)")
    p.add_argument("--n", type=int, default=n_default, help=n_help)
    p.add_argument("--seed", type=int, default=0, help="seed of the input subset (default 0)")
    p.add_argument("--target", default="predicted",
                   help="predicted | label | logprob | class:C | diff:C1,C2 (default predicted)")
    p.add_argument("--baseline", default="zero", help="zero | mean (default zero)")
    p.add_argument("--reference-n", type=int, default=1000,
                   help="training inputs whose mean activation is the 'mean' baseline")
    p.add_argument("--float64", action="store_true", help="compute in float64")


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
    """The model, its dataset's name, the seeded input subset, and for `--baseline mean` the
    seeded subset of training inputs whose mean activation is the baseline (else None)."""
    import torch

    import bilens

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
    return model, dataset, data, reference

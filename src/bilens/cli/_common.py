"""What `bilens compare`, `bilens sweep` and `bilens demo` share: the datasets they accept,
their common options, and the thread setting."""

from __future__ import annotations

import argparse

from bilens.experiments.compare import PRESETS

DATASETS = tuple(PRESETS)


def add_common(p: argparse.ArgumentParser, out_default: str | None = None) -> None:
    """Options shared by `compare`, `sweep` and `demo`."""
    p.add_argument("--out", default=out_default, required=out_default is None,
                   help="output directory (report/, JSON, cached models under models/)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs for every model (default: the dataset's preset)")
    p.add_argument("--n-verify", type=int, default=None,
                   help="test inputs whose every channel is ablated (default per dataset)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    p.add_argument("--force", action="store_true",
                   help="retrain and re-verify even when a cached model exists")
    p.add_argument("--cache", default=None,
                   help="cache directory for trained models (default: OUT/models)")
    p.add_argument("--target", default="predicted",
                   help="what attribution explains (SPEC §8): predicted | label | logprob | "
                        "class:C | diff:C1,C2 (default: predicted)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: these small models train fastest "
                        "on one thread, and several runs can share the machine)")


def setup_threads(args: argparse.Namespace) -> None:
    """`--threads N`: torch's CPU threads (0 or None: leave torch's choice)."""
    import torch

    if args.threads and args.threads > 0:
        torch.set_num_threads(args.threads)

"""`bilens train`: train a bilinear residual network and write its docs/spec.md §6 checkpoint,
or (`--kind transformer`) a bilinear transformer and its §9 checkpoint (`cli/train_lm.py`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bilens.cli._common import add_device, add_force, add_out, add_seed, add_threads, count
from bilens.core.data import DEFAULT_TEST_FRACTION
from bilens.training.train import TrainConfig

_DEFAULTS = TrainConfig()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a network and write its checkpoint",
        description="Train a bilinear residual network on a dataset, print its test accuracy "
                    "and active fraction, and write the checkpoint (config.json + "
                    "model.safetensors) atomically to --out.")
    p.add_argument("--kind", default="mlp", choices=("mlp", "transformer"),
                   help="model family: the MLP of docs/spec.md §1 or the transformer of §9")
    p.add_argument("--dataset", default=None, metavar="NAME|FILE",
                   help="mlp: digits | mnist | fashion-mnist | synthetic, or your own "
                        "FILE.npz|.safetensors|.pt holding x [N, d_in] and y [N] "
                        "(docs/training.md), default digits; transformer: synthetic-lm | "
                        "text | FILE, default synthetic-lm")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                   help="with a FILE: the share of its rows held out as the test split, a "
                        "fixed seeded split recorded in the checkpoint")
    p.add_argument("--norm", default="rms", help="none | rms | layer")
    p.add_argument("--position", default=None,
                   help="post | pre (default: post for mlp, pre for transformer)")
    p.add_argument("--d-model", type=count, default=64, help="residual width")
    p.add_argument("--d-hidden", type=count, default=128, help="channels per layer")
    p.add_argument("--layers", type=count, default=3, help="bilinear layers")
    p.add_argument("--eps", type=float, default=1e-5, help="norm eps")
    p.add_argument("--fixed-gain", action="store_true",
                   help="keep the norms' gain at 1 (and LayerNorm's bias at 0)")
    p.add_argument("--epochs", type=count, default=_DEFAULTS.epochs,
                   help="passes over the training set")
    p.add_argument("--batch-size", type=count, default=None,
                   help=f"examples (sequences) per step (default: mlp {_DEFAULTS.batch_size}, "
                        f"transformer 64)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default: mlp {_DEFAULTS.lr:g}, transformer 1e-2)")
    p.add_argument("--weight-decay", type=float, default=_DEFAULTS.weight_decay,
                   help="AdamW weight decay on the matrices")
    p.add_argument("--input-noise", type=float, default=_DEFAULTS.input_noise,
                   help="std of Gaussian noise on the standardized training inputs")
    p.add_argument("--l1", type=float, default=_DEFAULTS.l1,
                   help="weight of the L1 penalty mean|z| on hidden activations")
    p.add_argument("--grad-clip", type=float, default=_DEFAULTS.grad_clip,
                   help="clip the gradient norm (0: off)")
    p.add_argument("--warmup", type=float, default=_DEFAULTS.warmup,
                   help="fraction of steps of linear warmup")
    add_seed(p, "init, shuffling, noise and --n-train", default=_DEFAULTS.seed)
    add_device(p, _DEFAULTS.device)
    add_threads(p)
    p.add_argument("--n-train", type=count, default=None,
                   help="train on a seeded subset of this many examples (default: all)")
    add_out(p, "checkpoint directory", metavar="DIR",
            unset="runs/DATASET-NORM-POSITION-sSEED")
    add_force(p, "an existing checkpoint at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from bilens.cli.train_lm import add_arguments
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilens.cli._common import setup_threads
    from bilens.core.checkpoint import check_replaceable, save
    from bilens.core.config import ModelConfig
    from bilens.core.data import is_file, load_dataset, load_file
    from bilens.core.errors import BilensError
    from bilens.training.train import train

    if args.kind == "transformer":
        from bilens.cli.train_lm import run_lm
        return run_lm(args)
    args.dataset = args.dataset or "digits"
    if args.dataset in ("synthetic-lm", "text") or (Path(args.dataset).suffix == ".txt"):
        raise BilensError(f"--dataset {args.dataset}: a sequence dataset; add --kind "
                          f"transformer to train the bilinear transformer of docs/spec.md §9")
    args.position = args.position or "post"
    args.lr = _DEFAULTS.lr if args.lr is None else args.lr
    args.batch_size = _DEFAULTS.batch_size if args.batch_size is None else args.batch_size
    setup_threads(args)
    metadata = {}
    if is_file(args.dataset):          # your own data: one fixed seeded split of its rows
        metadata["test_fraction"] = args.test_fraction
        train_set = load_file(args.dataset, "train", n=args.n_train, seed=args.seed,
                              test_fraction=args.test_fraction)
        test_set = load_file(args.dataset, "test", test_fraction=args.test_fraction,
                             n_classes=train_set.n_classes)
        if train_set.y is None:
            raise BilensError(f"--dataset: {args.dataset} holds no labels (no array 'y'); "
                              f"training needs y [N] beside x [N, d_in]")
    else:
        train_set = load_dataset(args.dataset, "train", n=args.n_train, seed=args.seed)
        test_set = load_dataset(args.dataset, "test")
    model_config = ModelConfig(
        d_in=train_set.d_in, d_model=args.d_model, d_hidden=args.d_hidden,
        n_layers=args.layers, n_out=train_set.n_classes, norm=args.norm,
        norm_position=args.position, eps=args.eps, learnable_gain=not args.fixed_gain)
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, input_noise=args.input_noise, l1=args.l1,
        grad_clip=args.grad_clip, warmup=args.warmup, seed=args.seed, device=args.device)
    name = Path(args.dataset).stem if is_file(args.dataset) else args.dataset
    out = Path(args.out or f"runs/{name}-{args.norm}-{args.position}-s{args.seed}")
    check_replaceable(out, args.force)                 # before training, not after
    result = train(model_config, train_config, (train_set, test_set),
                   progress=not args.no_progress)
    save(result.model, out, {**result.metadata, **metadata}, overwrite=args.force)
    print(f"test accuracy {result.test_accuracy:.4f} ({100 * result.test_accuracy:.2f}%)  "
          f"train accuracy {result.train_accuracy:.4f}  "
          f"active fraction {result.active_fraction:.3f}  "
          f"{train_config.epochs} epochs in {result.wall_time:.1f} s")
    print(f"checkpoint: {out}")
    return 0

"""What every `bilens` command shares: the parser (no prefix matching, one-line errors, every
default written `(default: X)`), the integer types (`count`: unset is None, 0 is an error),
the shared options, each defined once here, and the options of `compare`, `sweep`, `demo`.

A command adopts the shared options by calling the helpers in its `add_parser`:

    add_device(p, default="cpu")                # --device
    add_threads(p)                              # --threads (setup_threads(args) applies it)
    add_float64(p)                              # --float64
    add_force(p, "an existing checkpoint")      # --force
    add_seed(p, "the input subset")             # --seed
    add_out(p, "output directory", metavar="OUTDIR")   # --out (required without a default)

`tests/test_cli_options.py` checks that every subcommand's help for these options is
worded as the templates below.
"""

from __future__ import annotations

import argparse
import string

from bilens.experiments.compare import PRESETS
from bilens.experiments.lm_compare import LM_PRESETS

DATASETS = tuple(PRESETS)
LM_DATASET_NAMES = tuple(LM_PRESETS)

# The shared options' help, one template each: `{field}` is filled by the helper's arguments.
DEVICE_HELP = "where to compute: cpu | cuda[:N] | auto, a GPU if there is one (default: {default})"
THREADS_HELP = ("CPU threads for torch; 1 suits these small models and a shared machine "
                "(default: {default})")
FLOAT64_HELP = "compute in float64 (default: the checkpoint's dtype)"
FORCE_HELP = "replace {what} (default: {otherwise})"
SEED_HELP = "random seed of {what} (default: {default})"
OUT_HELP = "{what} ({default})"
SHARED_HELP = {"--device": DEVICE_HELP, "--threads": THREADS_HELP, "--float64": FLOAT64_HELP,
               "--force": FORCE_HELP, "--seed": SEED_HELP, "--out": OUT_HELP}
REFUSE = "refuse to replace an existing result"


class HelpFormatter(argparse.HelpFormatter):
    """Adds `(default: X)` to an option whose help does not state its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False  # (0 and 0.0 are values)
        if ("(default:" not in text and action.option_strings and action.nargs != 0
                and not unset and action.default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` without prefix matching (`verify --mode` is not `--modes`),
    with `HelpFormatter`, and whose usage errors are one line that points at `--help`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def count(text: str) -> int:
    """argparse type of a count (`--n`, `--epochs`, `--seeds`, ...): an integer >= 1. An
    option left out is None (its default); 0 is refused, never read as "unset"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}; leave "
                                         f"the option out for its default")
    return value


def seed(text: str) -> int:
    """argparse type of a seed: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


# ------------------------------------------------------------------- the shared options


def add_device(p: argparse.ArgumentParser, default: str = "cpu", note: str = "") -> None:
    """`--device` (resolved by `bilens.core.device.resolve_device`); `note` is appended."""
    p.add_argument("--device", default=default,
                   help=DEVICE_HELP.format(default=default) + note)


def add_threads(p: argparse.ArgumentParser, default: int | None = None,
                unset: str = "torch's choice, one per core") -> None:
    """`--threads N` (a count); `unset` says what None means. Apply with `setup_threads`."""
    p.add_argument("--threads", type=count, default=default, metavar="N",
                   help=THREADS_HELP.format(default=unset if default is None else default))


def add_float64(p: argparse.ArgumentParser) -> None:
    """`--float64`: load the checkpoint in float64."""
    p.add_argument("--float64", action="store_true", help=FLOAT64_HELP)


def add_force(p: argparse.ArgumentParser, what: str, otherwise: str = REFUSE) -> None:
    """`--force`: replace `what`; `otherwise` is what happens without it."""
    p.add_argument("--force", action="store_true",
                   help=FORCE_HELP.format(what=what, otherwise=otherwise))


def add_seed(p: argparse.ArgumentParser, what: str, default: int = 0) -> None:
    """`--seed S` (an integer >= 0) of `what`."""
    p.add_argument("--seed", type=seed, default=default, metavar="S",
                   help=SEED_HELP.format(what=what, default=default))


def add_out(p: argparse.ArgumentParser, what: str, default: str | None = None,
            metavar: str | None = None, unset: str | None = None) -> None:
    """`--out`: required unless it has a `default`, or `unset` says what leaving it out
    does (then it is optional with no default)."""
    required = default is None and unset is None
    shown = ("required" if required else
             f"default: {default}" if default is not None else f"default: {unset}")
    p.add_argument("--out", default=default, required=required, metavar=metavar,
                   help=OUT_HELP.format(what=what, default=shown))


def template_regex(template: str) -> str:
    """A template's literal text escaped, its `{fields}` as `.+` (for the help tests)."""
    import re

    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(".+")
    return "".join(parts)


def setup_threads(args: argparse.Namespace) -> None:
    """`--threads N`: torch's CPU threads (None: leave torch's choice)."""
    import torch

    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)


# ------------------------------------------------------ compare, sweep and demo's options


def add_common(p: argparse.ArgumentParser, out_default: str | None = None) -> None:
    """Options shared by `compare` and `sweep`."""
    add_out(p, "output directory (report/, JSON, cached models under models/)", out_default,
            metavar="OUTDIR")
    p.add_argument("--epochs", type=count, default=None,
                   help="training epochs for every model (default: the dataset's preset)")
    p.add_argument("--n-verify", type=count, default=None,
                   help="test inputs whose every channel is ablated (default: per dataset)")
    add_device(p, "auto")
    add_force(p, "the cached models and verifications: retrain and re-verify",
              "reuse them; the report is always rewritten")
    p.add_argument("--cache", default=None,
                   help="cache directory for trained models (default: OUT/models)")
    p.add_argument("--target", default=None,
                   help="what attribution explains (docs/spec.md §2, §9): predicted | label | "
                        "logprob | class:C | diff:C1,C2; for --kind transformer next | "
                        "predicted | class:C | ... at the last position (default: predicted; "
                        "next for --kind transformer)")
    add_threads(p, default=1)
    g = p.add_argument_group("the model family")
    g.add_argument("--kind", choices=("mlp", "transformer"), default="mlp",
                   help="mlp: the bilinear MLP classifiers (datasets "
                        f"{', '.join(DATASETS)}); transformer: the bilinear transformer "
                        f"(datasets {', '.join(LM_DATASET_NAMES)}) (default: mlp)")
    g.add_argument("--steps", type=count, default=None,
                   help="--kind transformer: optimizer steps for every model (default: the "
                        "dataset's preset)")


def check_kind(args: argparse.Namespace) -> str:
    """The dataset for `--kind`, checked: `--dataset` must belong to the model family."""
    from bilens.core.errors import BilensError

    names = LM_DATASET_NAMES if args.kind == "transformer" else DATASETS
    dataset = args.dataset or names[0]
    if dataset not in names:
        other = "transformer" if args.kind == "mlp" else "mlp"
        raise BilensError(f"--dataset {dataset}: not a dataset of --kind {args.kind} "
                          f"({', '.join(names)}); pass --kind {other} or another --dataset")
    if args.kind == "mlp" and args.steps is not None:
        raise BilensError("--steps: only --kind transformer trains by steps; use --epochs")
    if args.kind == "transformer" and args.epochs is not None:
        raise BilensError("--epochs: --kind transformer trains by optimizer steps; use --steps")
    return dataset


def rank_device(name: str):
    """`--device`; under torchrun, `cuda` (or `auto` on a GPU host) is GPU `LOCAL_RANK`."""
    from bilens.core import distributed
    from bilens.core.device import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and distributed.world().active:
        return distributed.device()
    return device

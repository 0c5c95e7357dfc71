"""`bilens compare`: train none/rms/layer x post/pre at an equal budget (or reuse cached
models), verify each with both attribution modes, print the comparison table and write the
report (HTML, Markdown, JSON) with the claims that the comparison tests."""

from __future__ import annotations

import argparse
import time

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
    import torch

    if args.threads and args.threads > 0:
        torch.set_num_threads(args.threads)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="the seed's comparison table: norms x positions x attribution modes",
        description="Train (or reuse cached) models for norm none/rms/layer x position "
                    "post/pre at one equal budget, verify each with the frozen, live and "
                    "renorm attributions against real ablations, and write the comparison table, "
                    "the claims it tests and a recommendation to OUT/report/.")
    p.add_argument("--dataset", default="digits", choices=DATASETS,
                   help="dataset (default: digits)")
    p.add_argument("--seeds", type=int, default=1,
                   help="seeds per configuration; the table gives mean ± sd (default: 1)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="first seed: --seeds 1 --first-seed 2 trains seed 2 only (default: 0)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilens.experiments.compare import compare
    from bilens.report import document as report

    report.check_outdir(args.out)                 # before the work, not after
    setup_threads(args)
    start = time.perf_counter()
    result = compare(args.dataset, seeds=args.seeds, out=args.out, epochs=args.epochs,
                     n_verify=args.n_verify, device=args.device, force=args.force,
                     cache_dir=args.cache, target=args.target, first_seed=args.first_seed)
    results = report.build({
        "title": f"bilens compare: {args.dataset}, {args.seeds} seed(s)",
        "commands": [report.command_line()], "compare": result.to_dict(),
        "timing": {"compare": time.perf_counter() - start}})
    paths = report.write(results, args.out)
    print()
    print(report.compare_text(result.table))
    print()
    print(report.claims_text(results["claims"]))
    print()
    print("\n".join(results["recommendation"]["text"]))
    print(f"\nreport: {paths['html']}  ({time.perf_counter() - start:.1f} s)")
    return 0

"""`bilens compare`: train none/rms/layer x post/pre at an equal budget (or reuse cached
models), verify each with both attribution modes, print the comparison table and write the
report (HTML, Markdown, JSON) with the claims that the comparison tests."""

from __future__ import annotations

import argparse
import time

from bilens.cli._common import DATASETS, add_common, count, seed, setup_threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="the seed's comparison table: norms x positions x attribution modes",
        description="Train (or reuse cached) models for norm none/rms/layer x position "
                    "post/pre at one equal budget, verify each with the frozen, live and "
                    "renorm attributions against real ablations, and write the comparison table, "
                    "the claims it tests and a recommendation to OUT/report/.")
    p.add_argument("--dataset", default="digits", choices=DATASETS,
                   help="dataset (default: digits)")
    p.add_argument("--seeds", type=count, default=1,
                   help="seeds per configuration; the table gives mean ± sd (default: 1)")
    p.add_argument("--first-seed", type=seed, default=0,
                   help="first seed: --seeds 1 --first-seed 2 trains seed 2 only (default: 0)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilens import report
    from bilens.experiments.compare import compare
    from bilens.experiments.summary import build

    report.check_outdir(args.out)                 # before the work, not after
    setup_threads(args)
    start = time.perf_counter()
    result = compare(args.dataset, seeds=args.seeds, out=args.out, epochs=args.epochs,
                     n_verify=args.n_verify, device=args.device, force=args.force,
                     cache_dir=args.cache, target=args.target, first_seed=args.first_seed)
    results = build({
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

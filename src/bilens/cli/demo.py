"""`bilens demo`: the main job on digits, fast: compare, sweeps, claims, recommendation,
and the report (HTML, Markdown, JSON), in under 3 minutes on 2 CPU cores."""

from __future__ import annotations

import argparse
import time

from bilens.cli._common import setup_threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the main job on digits: comparison, sweeps, claims, report (< 3 min)",
        description="Train and verify none/rms/layer x post/pre on digits (3 seeds), run the "
                    "four sweeps of the seed's error analysis on small grids, print the "
                    "comparison and claims tables, and write the report to OUT/report/.")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto (default: cpu)")
    p.add_argument("--force", action="store_true", help="retrain instead of reusing the cache")
    p.add_argument("--seeds", type=int, default=None, help="seeds in the comparison (default 3)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default 8)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilens import report
    from bilens.experiments import demo

    report.check_outdir(args.out)                 # before the work, not after
    setup_threads(args)
    start = time.perf_counter()
    results = demo.run_demo(
        args.out, device=args.device, force=args.force, seeds=args.seeds or demo.SEEDS,
        epochs=args.epochs or demo.EPOCHS, command=report.command_line(),
        log=None if args.quiet else print)
    paths = report.write(results, args.out)
    print()
    print("Comparison (digits):")
    print(report.compare_text(results["compare"]["table"]))
    print()
    print("The seed's claims:")
    print(report.claims_text(results["claims"]))
    print()
    print("Recommendation:")
    print("\n".join(f"  - {t}" for t in results["recommendation"]["text"]))
    print(f"\nreport: {paths['html']}")
    print(f"        {paths['markdown']}, {paths['json']}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0

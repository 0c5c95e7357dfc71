"""`bilens demo`: the main job on digits, fast: compare, sweeps, claims, recommendation,
and the report (HTML, Markdown, JSON), in under 3 minutes on 2 CPU cores."""

from __future__ import annotations

import argparse
import time

from bilens.cli._common import add_device, add_force, add_out, add_threads, count, setup_threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the main job: the comparison, sweeps, claims and report on digits, and "
                     "on tiny language models (synthetic-lm) (< 3 min)",
        description="Train and verify none/rms/layer x post/pre on digits (3 seeds), run the "
                    "four sweeps of the seed's error analysis on small grids, do the same "
                    "comparison for tiny bilinear transformers on synthetic-lm (1 seed, every "
                    "node really ablated, every mode), print the comparison and claims "
                    "tables, and write the report to OUT/report/.")
    add_out(p, "output directory (report/, JSON, cached models under models/)", "runs/demo",
            metavar="OUTDIR")
    add_device(p)
    add_force(p, "the cached models and verifications: retrain and re-verify",
              "reuse them; the report is always rewritten")
    p.add_argument("--seeds", type=count, default=None,
                   help="seeds in the comparison (default: 3)")
    p.add_argument("--epochs", type=count, default=None,
                   help="epochs per MLP model (default: 8)")
    p.add_argument("--steps", type=count, default=None,
                   help="optimizer steps per transformer (default: the synthetic-lm preset's, "
                        "600)")
    p.add_argument("--lm-n-verify", type=count, default=None,
                   help="held-out sequences whose every node is ablated, per transformer "
                        "(default: 16)")
    add_threads(p, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilens import report
    from bilens.experiments import demo

    report.check_outdir(args.out)                 # before the work, not after
    setup_threads(args)
    start = time.perf_counter()
    results = demo.run_demo(
        args.out, device=args.device, force=args.force,
        seeds=demo.SEEDS if args.seeds is None else args.seeds,
        epochs=demo.EPOCHS if args.epochs is None else args.epochs, lm_steps=args.steps,
        lm_n_verify=args.lm_n_verify,
        command=report.command_line(),
        log=None if args.quiet else print)
    paths = report.write(results, args.out)
    _section("Comparison (digits):", report.compare_text(results["compare"]["table"]),
             results, "The seed's claims:", "Recommendation:")
    lm = results.get("lm")
    if lm:
        _section(f"Comparison (language models, {lm['compare']['dataset']}):",
                 report.lm_compare_text(lm["compare"]["table"]), lm,
                 "The seed's claims, on language models:",
                 "Recommendation for language models:")
        if results.get("combined"):
            print()
            print("Combined recommendation:")
            print("\n".join(f"  - {t}" for t in results["combined"]["text"]))
    print(f"\nreport: {paths['html']}")
    print(f"        {paths['markdown']}, {paths['json']}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _section(title: str, table: str, part: dict, claims_title: str, rec_title: str) -> None:
    """One family's comparison table, claims and recommendation (`part`), each headed."""
    from bilens import report

    print()
    print(title)
    print(table)
    print()
    print(claims_title)
    print(report.claims_text(part["claims"]))
    print()
    print(rec_title)
    print("\n".join(f"  - {t}" for t in part["recommendation"]["text"]))

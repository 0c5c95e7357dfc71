"""`bilens compare`: train none/rms/layer x post/pre at an equal budget (or reuse cached
models), verify each with both attribution modes, print the comparison table and write the
report (HTML, Markdown, JSON) with the claims that the comparison tests."""

from __future__ import annotations

import argparse
import time

from bilens.cli._common import (
    DATASETS,
    LM_DATASET_NAMES,
    add_common,
    check_kind,
    count,
    seed,
    setup_threads,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="the seed's comparison table: norms x positions x attribution modes",
        description="Train (or reuse cached) models for norm none/rms/layer x position "
                    "post/pre at one equal budget, verify each with the frozen, live and "
                    "renorm attributions against real ablations, and write the comparison table, "
                    "the claims it tests and a recommendation to OUT/report/. With --kind "
                    "transformer: bilinear transformers (pre/post), every MLP node of every "
                    "held-out sequence really ablated, modes frozen, frozen-norm, live, renorm.")
    p.add_argument("--dataset", default=None, choices=(*DATASETS, *LM_DATASET_NAMES),
                   help="dataset (default: digits; synthetic-lm for --kind transformer)")
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

    dataset = check_kind(args)
    report.check_outdir(args.out)                 # before the work, not after
    setup_threads(args)
    start = time.perf_counter()
    if args.kind == "transformer":
        return _run_lm(args, dataset, start)
    result = compare(dataset, seeds=args.seeds, out=args.out, epochs=args.epochs,
                     n_verify=args.n_verify, device=args.device, force=args.force,
                     cache_dir=args.cache, target=args.target or "predicted",
                     first_seed=args.first_seed)
    results = build({
        "title": f"bilens compare: {dataset}, {args.seeds} seed(s)",
        "commands": [report.command_line()], "compare": result.to_dict(),
        "timing": {"compare": time.perf_counter() - start}})
    paths = report.write(results, args.out)
    _print(report.compare_text(result.table), results, paths, start)
    return 0


def _print(table: str, part: dict, paths: dict, start: float) -> None:
    """The comparison's table, claims and recommendation (`part`: the results' family),
    and where the report is."""
    from bilens import report

    print()
    print(table)
    print()
    print(report.claims_text(part["claims"]))
    print()
    print("\n".join(part["recommendation"]["text"]))
    print(f"\nreport: {paths['html']}  ({time.perf_counter() - start:.1f} s)")


def _run_lm(args: argparse.Namespace, dataset: str, start: float) -> int:
    """`--kind transformer`: `compare_lm`, its claims and recommendation, the report."""
    from bilens import report
    from bilens.experiments.lm_compare import LM_TARGET, LMRunner, compare_lm
    from bilens.experiments.summary import build

    runner = LMRunner(args.cache or f"{args.out}/models", force=args.force, device=args.device,
                      n_verify=args.n_verify, target=args.target or LM_TARGET)
    result = compare_lm(dataset, seeds=args.seeds, out=args.out, steps=args.steps,
                        first_seed=args.first_seed, runner=runner)
    results = build({
        "title": f"bilens compare --kind transformer: {dataset}, {args.seeds} seed(s)",
        "commands": [report.command_line()], "lm": {"compare": result.to_dict()},
        "timing": {"compare": time.perf_counter() - start}})
    paths = report.write(results, args.out)
    _print(report.lm_compare_text(result.table), results["lm"], paths, start)
    return 0

"""`bilens sweep`: the seed's error analysis along one axis (d_model, sparsity, depth,
position), or all four; each writes a table and a plot into OUT/report/."""

from __future__ import annotations

import argparse
import time

from bilens.cli._common import (
    DATASETS,
    LM_DATASET_NAMES,
    add_common,
    check_kind,
    count,
    setup_threads,
)
from bilens.experiments.sweeps import LM_SWEEPS, SWEEPS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="error against d_model, sparsity, depth or norm position",
        description="Train (or reuse) RMSNorm models along one axis, verify each with the "
                    "three attribution modes (frozen, live, renorm), and write the table and "
                    "plot to OUT/report/. "
                    "d_model: 64..1024; sparsity: the L1 penalty on z, with the measured "
                    "active fraction; depth: 1..8 layers, error layer by layer; position: "
                    "pre vs post for RMSNorm and LayerNorm over depth. With --kind "
                    "transformer: RMSNorm pre-norm bilinear transformers, d_model 64..512, "
                    "sparsity, depth 1..8, every MLP node really ablated.")
    p.add_argument("name", choices=[*SWEEPS, "all"],
                   help="which sweep ('all': the four; --kind transformer: d_model, sparsity, "
                        "depth)")
    p.add_argument("--dataset", default=None, choices=(*DATASETS, *LM_DATASET_NAMES),
                   help="dataset (default: digits; synthetic-lm for --kind transformer)")
    p.add_argument("--values", default=None,
                   help="comma-separated grid, e.g. 64,256,1024 (default: the sweep's grid)")
    p.add_argument("--fast", action="store_true", help="the small grid bilens demo uses")
    p.add_argument("--seeds", type=count, default=1, help="seeds per point (default: 1)")
    add_common(p)
    p.set_defaults(func=run)


def _values(text: str | None) -> tuple | None:
    if not text:
        return None
    from bilens.core.errors import BilensError

    out = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise BilensError(f"--values: {part!r} is not a number; pass e.g. 64,256,1024") \
                from None
        out.append(int(value) if value.is_integer() and "." not in part else value)
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    from bilens import report
    from bilens.core.errors import BilensError
    from bilens.experiments.compare import DEFAULT_N_VERIFY, Runner
    from bilens.experiments.lm_compare import LM_TARGET, LMRunner
    from bilens.experiments.summary import build
    from bilens.experiments.sweeps import sweep

    dataset, lm = check_kind(args), args.kind == "transformer"
    defs = LM_SWEEPS if lm else SWEEPS
    if args.name != "all" and args.name not in defs:
        raise BilensError(f"sweep {args.name}: --kind {args.kind} sweeps "
                          f"{', '.join(defs)} (or all)")
    setup_threads(args)
    names = list(defs) if args.name == "all" else [args.name]
    values = _values(args.values)
    if values and len(names) > 1:
        raise BilensError("--values: give one sweep name with --values, not 'all'")
    report.check_outdir(args.out)                     # before the work, not after
    start = time.perf_counter()
    cache = args.cache or f"{args.out}/models"
    runner = (LMRunner(cache, force=args.force, device=args.device, n_verify=args.n_verify,
                       target=args.target or LM_TARGET) if lm else
              Runner(cache, force=args.force, device=args.device,
                     n_verify=DEFAULT_N_VERIFY.get(dataset, 64) if args.n_verify is None
                     else args.n_verify, target=args.target or "predicted"))
    sweeps = {}
    for name in names:
        result = sweep(name, dataset, out=args.out, values=values, fast=args.fast,
                       seeds=args.seeds, epochs=args.steps if lm else args.epochs,
                       runner=runner)
        sweeps[name] = result.to_dict()
        print()
        print(f"sweep {name} ({dataset}):")
        print((report.lm_sweep_text if lm else report.sweep_text)(sweeps[name]))
    part = {"lm": {"sweeps": sweeps}} if lm else {"sweeps": sweeps}
    results = build({"title": f"bilens sweep {args.name}: {dataset}",
                     "commands": [report.command_line()], **part,
                     "timing": {"sweep": time.perf_counter() - start}})
    paths = report.write(results, args.out)
    print(f"\nreport: {paths['html']}  ({time.perf_counter() - start:.1f} s)")
    return 0

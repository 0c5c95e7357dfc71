"""The language-model runs behind docs/results-lm.md, in parallel on one GPU, in one deadline.

    python benchmarks/run_compare_lm_gpu.py run --out OUT [--limit 540] [--dataset text]
    python benchmarks/run_compare_lm_gpu.py report OUT      # rebuild the report from JSONs

`run` starts, as separate processes sharing the GPU:

    bilens compare --kind transformer --dataset text --seeds 1 --first-seed S   (S = 0, 1, 2)
    bilens sweep d_model|depth|sparsity --kind transformer --dataset text       (one each)

each under `timeout LIMIT` (every process writes its JSON after each model, so a job cut
short keeps the models it finished), merges the three seeds into one comparison
(`aggregate_lm`), decomposes the compared models (claim 11 on `text`), builds the report
(`summary.collect` + `build`, `report.write`), and packs reports, JSONs and logs (no
models) into `OUT/results.tar.gz`. The text comes from `BILENS_DATA_DIR/kjv.txt` on a
machine without Debian's `bible-kjv` (`benchmarks/lm_table.py --export .whl/data`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SWEEP_NAMES = ("d_model", "depth", "sparsity")


def jobs(dataset: str, seeds: int, configs: str | None = None,
         values: dict[str, str] | None = None) -> dict[str, list[str]]:
    """The processes: one per seed of the comparison (`configs`: only those, through
    `part`), one per sweep (`values`: only those points; `{}`: no sweep)."""
    kind = ["--kind", "transformer", "--dataset", dataset]
    if configs:
        out = {f"compare-{dataset}-s{s}-part": [
            "@part", "--dataset", dataset, "--seed", str(s), "--configs", configs]
            for s in range(seeds)}
    else:
        out = {f"compare-{dataset}-s{s}": ["compare", *kind, "--seeds", "1",
                                           "--first-seed", str(s)] for s in range(seeds)}
    for s in SWEEP_NAMES:
        if values is None or s in values:
            out[f"sweep-{s}{'-part' if values else ''}"] = [
                "sweep", s, *kind, *(["--values", values[s]] if values else [])]
    return out


def part(args: argparse.Namespace) -> int:
    """One seed of the comparison for some `(norm, position)` pairs only: `compare_lm`."""
    sys.path.insert(0, str(Path("src").resolve()))
    from bilens.experiments.lm_compare import LMRunner, compare_lm

    configs = [tuple(c.split("/")) for c in args.configs.split(",")]
    runner = LMRunner(Path(args.out) / "models", device=args.device, n_verify=args.n_verify)
    compare_lm(args.dataset, seeds=1, first_seed=args.seed, out=args.out, steps=args.steps,
               runner=runner, configs=configs)
    return 0


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(Path("src").resolve()) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                   "")}
    start = time.time()
    procs = {}
    values = ({} if args.no_sweeps else
              dict(v.split("=", 1) for v in args.sweep_values.split(";"))
              if args.sweep_values else None)
    for name, cmd in jobs(args.dataset, args.seeds, args.configs, values).items():
        if args.only and name not in args.only.split(","):
            continue
        extra = ["--device", args.device, "--out", str(work / name)]
        extra += ["--steps", str(args.steps)] if args.steps else []
        extra += ["--n-verify", str(args.n_verify)] if args.n_verify else []
        log = open(work / f"{name}.log", "w")   # noqa: SIM115 (closed below)
        head = ([sys.executable, __file__, "part", *cmd[1:]] if cmd[0] == "@part"
                else [sys.executable, "-m", "bilens", *cmd])
        full = ["timeout", str(args.limit), *head, *extra]
        log.write("$ " + " ".join(full) + "\n")
        log.flush()
        procs[name] = (subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, env=env),
                       log)
    for name, (proc, log) in procs.items():
        rc = proc.wait()
        log.close()
        print(f"{name}: exit {rc} after {time.time() - start:.0f} s", flush=True)
    merge(work, args.dataset, args.earlier)
    if args.verify_len:
        verify_one(work, args, env)
    if not args.no_decompose:
        decompose(work, args.dataset)
    try:                                    # the JSONs come back even if the report fails
        build_report(out, args.dataset, time.time() - start)
    except Exception as err:                # noqa: BLE001 (reported, then packed anyway)
        print(f"report failed: {type(err).__name__}: {err}", flush=True)
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
        for path in sorted(out.rglob("*")):
            if (path.is_file() and "models" not in path.parts
                    and path.suffix not in (".gz", ".safetensors")):
                tar.add(path, arcname=str(path.relative_to(out)))
    print(f"packed {out / 'results.tar.gz'} in {time.time() - start:.0f} s")
    return 0


def verify_one(work: Path, args: argparse.Namespace, env: dict[str, str]) -> None:
    """`bilens verify` on seed 0's RMSNorm pre-norm model, on longer sequences than the
    comparison's (`--verify-len`): the docs/verification.md row of the attribution issue."""
    found = sorted(work.glob(f"compare-{args.dataset}-s0*/models/{args.dataset}-rms-pre-*"))
    if not found:
        return
    cmd = ["timeout", str(args.verify_limit), sys.executable, "-m", "bilens", "verify",
           str(found[0]), "--n", str(args.verify_n), "--seq-len", str(args.verify_len),
           "--target", "next", "--modes", "frozen,frozen-norm,live,renorm",
           "--device", args.device, "--out", str(work / f"verify-{args.dataset}")]
    start = time.time()
    with open(work / f"verify-{args.dataset}.log", "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    print(f"verify: exit {rc} after {time.time() - start:.0f} s", flush=True)


def merge(work: Path, dataset: str, earlier: str | None = None) -> None:
    """`compare-<dataset>-s<seed>*/compare-lm.json` (and the rows of an `earlier` call's
    merged `compare-lm.json`) -> `compare-<dataset>/compare-lm.json`."""
    sys.path.insert(0, str(Path("src").resolve()))
    from bilens.core.io import write_json
    from bilens.experiments.lm_compare import aggregate_lm

    parts = [json.loads(f.read_text())
             for f in sorted(work.glob(f"compare-{dataset}-s*/compare-lm.json"))]
    if earlier:
        parts.append(json.loads(Path(earlier).read_text()))
    if not parts:
        return
    unique = {(r["norm"], r["position"], r["seed"]): r for p in parts for r in p["rows"]}
    rows = list(unique.values())                       # a row measured twice counts once
    seeds = sorted({r["seed"] for r in rows})
    complete = all((n, pos, s) in unique for n in ("none", "rms", "layer")
                   for pos in ("pre", "post") for s in seeds)
    settings = {**parts[0]["settings"], "seeds": len(seeds), "first_seed": 0,
                "complete": complete}
    write_json(work / f"compare-{dataset}" / "compare-lm.json",
               {"dataset": dataset, "settings": settings,
                "table": aggregate_lm(rows, ("norm", "position")), "rows": rows,
                "wall_time": max(p["wall_time"] for p in parts)})


def decompose(work: Path, dataset: str) -> None:
    """The weight-based decomposition of every compared model (claim 11 on `text`)."""
    sys.path.insert(0, str(Path("src").resolve()))
    from bilens.core.io import write_json
    from bilens.experiments.decompose_models import decompose_compared
    from bilens.experiments.lm_compare import LMRunner

    path = work / f"compare-{dataset}" / "compare-lm.json"
    if not path.is_file():
        return
    start = time.time()
    cmp = json.loads(path.read_text())
    runner = LMRunner(work / "unused", log=None)
    write_json(path.parent / "decomposition-lm.json", decompose_compared(cmp, runner.dataset))
    print(f"decomposed {len(cmp['rows'])} models in {time.time() - start:.0f} s", flush=True)


def build_report(out: Path, dataset: str, wall: float | None = None) -> None:
    """One report from the JSONs under `out/work` (whatever finished)."""
    sys.path.insert(0, str(Path("src").resolve()))
    from bilens import report
    from bilens.experiments.summary import build, collect

    work = out / "work"
    dirs = [work / f"compare-{dataset}", *(work / f"sweep-{s}" for s in SWEEP_NAMES)]
    results = collect(*[d for d in dirs if d.is_dir()])
    lm = results.get("lm") or {}
    if not lm.get("compare") and not lm.get("sweeps"):
        print("nothing finished: no report", flush=True)
        return
    results.update(title=f"bilens on {dataset}: the seed's claims on language models (GPU)",
                   commands=[" ".join(["bilens", *cmd])
                             for cmd in jobs(dataset, 3).values()])
    if wall is not None:
        results["timing"] = {"wall": wall}
    paths = report.write(build(results), out / dataset)
    print(f"{dataset}: {paths['html']}", flush=True)


def rebuild(args: argparse.Namespace) -> int:
    """Rebuild the report from an unpacked results folder (the verdicts are computed from
    the numbers, so this applies the current rules to the measured JSONs)."""
    build_report(Path(args.results), args.dataset)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default="text")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=int, default=540, help="seconds per job")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--n-verify", type=int, default=None)
    p.add_argument("--only", default=None, help="comma-separated job names")
    p.add_argument("--no-decompose", action="store_true")
    p.add_argument("--configs", default=None,
                   help="only these norm/position pairs of the comparison, e.g. "
                        "rms/post,layer/pre (one process per seed)")
    p.add_argument("--no-sweeps", action="store_true", help="only the comparison")
    p.add_argument("--earlier", default=None,
                   help="a merged compare-lm.json of an earlier call whose rows join this one's "
                        "(e.g. benchmarks/results/h200-lm/compare-lm.json)")
    p.add_argument("--sweep-values", default=None,
                   help="only these sweep points, e.g. 'd_model=512;depth=8' (other sweeps "
                        "skipped)")
    p.add_argument("--verify-len", type=int, default=64,
                   help="tokens per sequence of the one bilens verify run (0: skip it)")
    p.add_argument("--verify-n", type=int, default=8)
    p.add_argument("--verify-limit", type=int, default=120)
    p.set_defaults(func=run)
    q = sub.add_parser("part")
    q.add_argument("--dataset", default="text")
    q.add_argument("--seed", type=int, required=True)
    q.add_argument("--configs", required=True)
    q.add_argument("--device", default="cuda")
    q.add_argument("--out", required=True)
    q.add_argument("--steps", type=int, default=None)
    q.add_argument("--n-verify", type=int, default=None)
    q.set_defaults(func=part)
    r = sub.add_parser("report")
    r.add_argument("results")
    r.add_argument("--dataset", default="text")
    r.set_defaults(func=rebuild)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

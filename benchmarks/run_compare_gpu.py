"""The heavy runs behind docs/results.md, in parallel on one GPU, inside a fixed deadline.

    python benchmarks/run_compare_gpu.py run --out OUT [--data .data5] [--limit 420]
    python benchmarks/run_compare_gpu.py report OUT        # rebuild the reports from JSONs
    python benchmarks/run_compare_gpu.py docs OUT          # here: docs/results.md + PNGs

`run` starts, as separate processes sharing the GPU (each is small and launch-bound, so
they overlap well):

    bilens compare --dataset mnist --seeds 3
    bilens compare --dataset fashion-mnist --seeds 3
    bilens sweep d_model|sparsity|depth|position --dataset mnist     (one process each)

each under `timeout LIMIT`, then builds one combined report per dataset from whatever
finished (`experiments.summary.collect` + `build`, then `report.write`), and packs
reports, JSONs and logs (no models) into `OUT/results.tar.gz`. Data come from `--data`:
`{name}-{split}.npz` files (BILENS_DATA_DIR) and, for fashion-mnist, Debian's raw `*.gz`
under `--data/fashion`, copied to where `bilens.data` looks for them.

`docs` unpacks nothing: it reads OUT (an unpacked results folder) and writes
docs/results.md's generated part and docs/img/results/*.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

# --split: each comparison's seeds in separate processes (more overlap on one GPU); their
# compare.json files are merged into work/compare-<dataset>/ before the reports are built.
SPLIT = {f"compare-{d}-s{s}": ["compare", "--dataset", d, "--seeds", "1", "--first-seed", str(s)]
         for d in ("mnist", "fashion-mnist") for s in range(3)}
JOBS = {
    "compare-mnist": ["compare", "--dataset", "mnist", "--seeds", "3"],
    "compare-fashion-mnist": ["compare", "--dataset", "fashion-mnist", "--seeds", "3"],
    **{f"sweep-{s}": ["sweep", s, "--dataset", "mnist"]
       for s in ("d_model", "sparsity", "depth", "position")},
}


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    raw = data / "fashion"
    if raw.is_dir():
        target = Path("/usr/share/datasets/fashion-mnist")
        target.mkdir(parents=True, exist_ok=True)
        for f in raw.glob("*.gz"):
            if not (target / f.name).exists():
                shutil.copy(f, target / f.name)
    env = {**os.environ, "BILENS_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(Path("src").resolve()) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                   "")}
    start = time.time()
    procs = {}
    for name, cmd in (SPLIT if args.split else JOBS).items():
        if args.only and name not in args.only.split(","):
            continue
        extra = ["--device", args.device, "--out", str(work / name)]
        if args.epochs:
            extra += ["--epochs", str(args.epochs)]
        if args.n_verify:
            extra += ["--n-verify", str(args.n_verify)]
        log = open(work / f"{name}.log", "w")   # noqa: SIM115 (closed below)
        full = ["timeout", str(args.limit), sys.executable, "-m", "bilens", *cmd, *extra]
        log.write("$ " + " ".join(full) + "\n")
        log.flush()
        procs[name] = (subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, env=env),
                       log)
    for name, (proc, log) in procs.items():
        rc = proc.wait()
        log.close()
        print(f"{name}: exit {rc} after {time.time() - start:.0f} s", flush=True)
    if args.split:
        merge_split(work)
    build_reports(out, time.time() - start)
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
        for path in sorted(out.rglob("*")):
            if path.is_file() and "models" not in path.parts and path.suffix != ".gz":
                tar.add(path, arcname=str(path.relative_to(out)))
    print(f"packed {out / 'results.tar.gz'} in {time.time() - start:.0f} s")
    return 0


def merge_split(work: Path) -> None:
    """Merge `compare-<dataset>-s<seed>/compare.json` into `compare-<dataset>/compare.json`."""
    import json

    sys.path.insert(0, str(Path("src").resolve()))
    from bilens.core.io import write_json
    from bilens.experiments.stats import aggregate

    for dataset in ("mnist", "fashion-mnist"):
        parts = [json.loads(f.read_text())
                 for f in sorted(work.glob(f"compare-{dataset}-s*/compare.json"))]
        if not parts:
            continue
        rows = [r for p in parts for r in p["rows"]]
        settings = {**parts[0]["settings"], "seeds": len({r["seed"] for r in rows}),
                    "first_seed": 0, "complete": all(p["settings"].get("complete", True)
                                                      for p in parts)}
        write_json(work / f"compare-{dataset}" / "compare.json",
                   {"dataset": dataset, "settings": settings,
                    "table": aggregate(rows, ("norm", "position")), "rows": rows,
                    "wall_time": max(p["wall_time"] for p in parts)})


def build_reports(out: Path, wall: float | None = None) -> None:
    """One combined report per dataset from the JSONs under `out/work` (what finished)."""
    sys.path.insert(0, str(Path("src").resolve()))
    from bilens import report
    from bilens.experiments.summary import build, collect

    work = out / "work"
    sweeps = [f"sweep-{s}" for s in ("d_model", "sparsity", "depth", "position")]
    for dataset, dirs in (("mnist", ["compare-mnist", *sweeps]),
                          ("fashion-mnist", ["compare-fashion-mnist"])):
        results = collect(*[work / d for d in dirs])
        if not results.get("compare") and not results["sweeps"]:
            continue
        results.update(title=f"bilens on {dataset}: the seed's claims measured (GPU)",
                       commands=[" ".join(["bilens", *JOBS[d]]) for d in dirs
                                 if (work / d).is_dir()])
        if wall is not None:
            results["timing"] = {"wall": wall}
        paths = report.write(build(results), out / dataset)
        print(f"{dataset}: {paths['html']}", flush=True)


def rebuild(args: argparse.Namespace) -> int:
    """Rebuild the combined reports from an unpacked results folder (verdicts are computed
    from the numbers, so this applies the current rules to the measured JSONs)."""
    build_reports(Path(args.results))
    return 0


def docs(args: argparse.Namespace) -> int:
    """Copy the plots into docs/img/results/ and print the generated Markdown sections."""
    src = Path(args.results)
    img = Path("docs/img/results")
    img.mkdir(parents=True, exist_ok=True)
    for dataset in ("mnist", "fashion-mnist"):
        folder = src / dataset / "report"
        for png in sorted(folder.glob("*.png")):
            shutil.copy(png, img / f"{dataset}-{png.name}")
        if (folder / "report.md").is_file():
            text = (folder / "report.md").read_text().replace("](", f"](img/results/{dataset}-")
            print(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=".data5")
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=int, default=420, help="seconds per job")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--n-verify", type=int, default=None)
    p.add_argument("--only", default=None, help="comma-separated job names")
    p.add_argument("--split", action="store_true",
                   help="only the two comparisons, one process per seed, merged")
    p.set_defaults(func=run)
    r = sub.add_parser("report")
    r.add_argument("results")
    r.set_defaults(func=rebuild)
    d = sub.add_parser("docs")
    d.add_argument("results")
    d.set_defaults(func=docs)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

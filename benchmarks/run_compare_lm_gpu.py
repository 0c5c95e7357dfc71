"""The language-model runs behind docs/results-lm.md, in parallel on one GPU, in one deadline.

    python benchmarks/run_compare_lm_gpu.py run --out OUT [--limit 540] [--dataset text]
    python benchmarks/run_compare_lm_gpu.py report OUT      # rebuild the report from JSONs

`run` starts, as separate processes sharing the GPU:

    bilens compare --kind transformer --dataset text --seeds 1 --first-seed S   (S = 0, 1, 2)
    bilens sweep d_model|depth|sparsity --kind transformer --dataset text       (one each)

each under `timeout LIMIT` (every process writes its JSON after each model, so a job cut
short keeps the models it finished), at most `--parallel` at once with the CPU threads
shared among them (`OMP_NUM_THREADS`: with 6 processes of 16 threads each on 16 cores the
verifications slowed down several-fold). It merges the seeds into one comparison
(`aggregate_lm`, with `--earlier` calls' rows), decomposes the compared models (claim 11 on
`text`: a `part` decomposes its own models while they are on disk, `--decompose-only`
retrains an earlier call's from their seeds), builds the report (`summary.collect` +
`build`, `report.write`), and packs reports, JSONs and logs (no models) into
`OUT/results.tar.gz`. The text comes from `BILENS_DATA_DIR/kjv.txt` on a machine without
Debian's `bible-kjv` (`benchmarks/lm_table.py --export .whl/data`).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SWEEP_NAMES = ("d_model", "depth", "sparsity")


def jobs(dataset: str, seeds: int | list[int], configs: str | None = None,
         values: list[tuple[str, str | None]] | None = None,
         decompose_only: dict[int, str] | None = None,
         decompose_parts: bool = True) -> dict[str, list[str]]:
    """The processes: one per seed of the comparison (`configs`: only those, through
    `part`, which decomposes its models too), one per sweep (`values`: one per
    `(sweep, points)` pair instead, `[]`: no sweep), and one per seed of `decompose_only`
    (`seed -> configs` only trained and decomposed)."""
    kind = ["--kind", "transformer", "--dataset", dataset]
    seed_list = range(seeds) if isinstance(seeds, int) else seeds
    if configs:
        out = {f"compare-{dataset}-s{s}-part": [
            "@part", "--dataset", dataset, "--seed", str(s), "--configs", configs,
            *(["--decompose"] if decompose_parts else [])] for s in seed_list}
    else:
        out = {f"compare-{dataset}-s{s}": ["compare", *kind, "--seeds", "1",
                                           "--first-seed", str(s)] for s in seed_list}
    for s, which in (decompose_only or {}).items():
        out[f"decompose-{dataset}-s{s}"] = ["@part", "--dataset", dataset, "--seed", str(s),
                                             "--configs", which, "--no-verify"]
    if values is None:
        values = [(s, None) for s in SWEEP_NAMES]
    for i, (s, v) in enumerate(values):
        out[f"sweep-{s}" if v is None else f"sweep-{s}-part{i}"] = [
            "sweep", s, *kind, *(["--values", v] if v else [])]
    return out


def part(args: argparse.Namespace) -> int:
    """One seed of the comparison for some `(norm, position)` pairs only: `compare_lm`;
    with `--decompose` the models are decomposed here too, while they are on disk (a device
    call's models do not come back); with `--no-verify` they are only trained and decomposed
    (`retrained.json` records their held-out loss, to set beside the verified rows')."""
    sys.path.insert(0, str(Path("src").resolve()))
    from bilens.core.io import write_json
    from bilens.experiments.compare import compare_specs
    from bilens.experiments.lm_compare import POSITIONS_LM, LMRunner, compare_lm, lm_preset_spec

    configs = [tuple(c.split("/")) for c in args.configs.split(",")]
    if args.stack_every:                    # where a slow job spends its time, in its log
        faulthandler.dump_traceback_later(args.stack_every, repeat=True)
    start = time.time()
    runner = LMRunner(Path(args.out) / "models", device=args.device, n_verify=args.n_verify,
                      log=lambda line: print(f"[{time.time() - start:6.1f} s] {line}",
                                             flush=True))
    verify = runner.verify

    def timed(model, dataset, target=None):
        runner.log(f"verifying {model.config.norm}/{model.config.norm_position} for {target}")
        summary = verify(model, dataset, target)
        runner.log(f"verified in {summary['verify_time']:.1f} s")
        return summary

    runner.verify = timed
    if args.no_verify:
        specs = [s for s in compare_specs(lm_preset_spec(args.dataset, args.steps), 1,
                                          positions=POSITIONS_LM, first_seed=args.seed)
                 if (s.model["norm"], s.model["norm_position"]) in configs]
        rows = []
        for spec in specs:
            info = runner.model(spec)[1]
            rows.append({"norm": spec.model["norm"], "position": spec.model["norm_position"],
                         "seed": args.seed, **info})
        cmp = {"dataset": args.dataset, "settings": {"kind": "transformer"}, "rows": rows}
        write_json(Path(args.out) / "retrained.json", cmp)
    else:
        cmp = compare_lm(args.dataset, seeds=1, first_seed=args.seed, out=args.out,
                         steps=args.steps, runner=runner, configs=configs).to_dict()
    if args.decompose or args.no_verify:
        decompose_rows(cmp, Path(args.out) / "decomposition-lm.json", runner.log)
    return 0


def decompose_rows(cmp: dict, path: Path, log) -> None:
    """`decompose_compared` of the rows of `cmp` whose checkpoints are on disk -> `path`."""
    from bilens.core.io import write_json
    from bilens.experiments.decompose_models import decompose_compared
    from bilens.experiments.lm_compare import LMRunner

    rows = [r for r in cmp["rows"] if Path(r["model_dir"]).is_dir()]
    if rows:
        runner = LMRunner(path.parent / "unused", log=None)
        write_json(path, decompose_compared({**cmp, "rows": rows}, runner.dataset, log=log))


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(Path("src").resolve()) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                   "")}
    start = time.time()
    if args.sweep_values and any("=" not in v for v in args.sweep_values.split(";")):
        raise SystemExit(f"--sweep-values: expected NAME=V1,V2;NAME=V3, got "
                         f"{args.sweep_values!r}")
    values = ([] if args.no_sweeps else
              [tuple(v.split("=", 1)) for v in args.sweep_values.split(";")]
              if args.sweep_values else None)
    seeds = ([int(v) for v in args.seed_list.split(",")] if args.seed_list
             else args.seeds)
    only = (dict((int(k), v) for k, v in (e.split(":", 1) for e in
                                           args.decompose_only.split(";")))
            if args.decompose_only else None)
    todo = [(name, cmd) for name, cmd in jobs(args.dataset, seeds, args.configs, values,
                                              only, not args.no_decompose).items()
            if not args.only or name in args.only.split(",")]
    width = min(args.parallel or len(todo), len(todo)) or 1
    env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // width))
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    while todo or running:
        while todo and len(running) < width:
            left = int(args.deadline - (time.time() - start)) if args.deadline else args.limit
            if left < 30:                   # not worth starting: the call's deadline is near
                print(f"skipped (deadline): {', '.join(n for n, _ in todo)}", flush=True)
                todo.clear()
                break
            name, cmd = todo.pop(0)
            running[name] = launch(name, cmd, work, args, env, min(args.limit, left))
        time.sleep(1)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[name]
                print(f"{name}: exit {proc.returncode} after {time.time() - start:.0f} s",
                      flush=True)
    merge(work, args.dataset, args.earlier)
    merge_sweeps(work)
    if args.verify_len:
        verify_one(work, args, env)
    if not args.no_decompose:
        decompose(work, args.dataset, args.earlier_decomposition)
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


def launch(name: str, cmd: list[str], work: Path, args: argparse.Namespace,
           env: dict[str, str], limit: int) -> tuple[subprocess.Popen, object]:
    """Start one job under `timeout limit`, its output in `work/<name>.log`."""
    extra = ["--device", args.device, "--out", str(work / name)]
    extra += ["--steps", str(args.steps)] if args.steps else []
    extra += ["--n-verify", str(args.n_verify)] if args.n_verify else []
    if cmd[0] == "@part" and args.stack_every:
        extra += ["--stack-every", str(args.stack_every)]
    log = open(work / f"{name}.log", "w")   # noqa: SIM115 (closed by the caller)
    head = ([sys.executable, __file__, "part", *cmd[1:]] if cmd[0] == "@part"
            else [sys.executable, "-m", "bilens", *cmd])
    full = ["timeout", str(limit), *head, *extra]
    log.write("$ " + " ".join(full) + "\n")
    log.flush()
    return subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, env=env), log


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

    parts = [json.loads(Path(f).read_text()) for f in (earlier or "").split(",") if f]
    parts += [json.loads(f.read_text())           # after the earlier ones: this call's win
              for f in sorted(work.glob(f"compare-{dataset}-s*/compare-lm.json"))]
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


SWEEP_FIELDS = {"d_model": "d_model", "depth": "n_layers", "sparsity": "l1"}


def merge_sweeps(work: Path) -> None:
    """`sweep-<name>-part<i>/sweep-lm-<name>.json` -> `sweep-<name>/sweep-lm-<name>.json`.
    A point at the base of every sweep (d_model 256, 4 layers, L1 0) is one model: a row of
    any sweep whose other two fields are at the base joins this sweep too, its `x` read
    from the row's own field."""
    sys.path.insert(0, str(Path("src").resolve()))
    from bilens.core.io import write_json
    from bilens.experiments.lm_compare import aggregate_lm

    parts = {f: json.loads(f.read_text()) for f in sorted(work.glob("sweep-*-part*/*.json"))}
    rows = {}
    for d in parts.values():
        for r in d["rows"]:
            rows[(r["norm"], r["position"], r["d_model"], r["n_layers"], float(r["l1"]),
                  r["seed"])] = r
    for name, field in SWEEP_FIELDS.items():
        mine = [d for d in parts.values() if d["name"] == name]
        if not mine:
            continue
        base = mine[0]["settings"]
        at_base = {"d_model": base["model"]["d_model"], "n_layers": base["model"]["n_layers"],
                   "l1": float(base["train"].get("l1", 0.0))}
        got = sorted(({**r, "x": r[field], "tags": {**r["tags"], "sweep": name, "x": r[field]}}
                      for r in rows.values()
                      if all(float(r[f]) == v for f, v in at_base.items() if f != field)),
                     key=lambda r: (r["x"], r["seed"]))
        values = sorted({r["x"] for r in got})
        write_json(work / f"sweep-{name}" / f"sweep-lm-{name}.json", {
            **mine[0], "rows": got, "table": aggregate_lm(got, ("norm", "position", "x")),
            "settings": {**base, "values": values,
                         "complete": all(d["settings"].get("complete", True) for d in mine)},
            "wall_time": max(d["wall_time"] for d in mine)})
        print(f"sweep {name}: {values}", flush=True)


def decompose(work: Path, dataset: str, earlier: str | None = None) -> None:
    """The weight-based decomposition of every compared model (claim 11 on `text`): the
    parts' own (`part --decompose`), the rows whose models are still on disk, and an
    `earlier` call's merged `decomposition-lm.json`, joined (a model decomposed twice counts
    once) -> `compare-<dataset>/decomposition-lm.json`."""
    sys.path.insert(0, str(Path("src").resolve()))
    from bilens.core.io import write_json

    path = work / f"compare-{dataset}" / "compare-lm.json"
    if not path.is_file():
        return
    start = time.time()
    here = work / f"compare-{dataset}" / "decomposition-here.json"
    here.unlink(missing_ok=True)                    # an earlier run's in the same --out
    cmp = json.loads(path.read_text())
    done = [json.loads(f.read_text()) for f in sorted(work.glob("*/decomposition-lm.json"))
            if f.parent.name != f"compare-{dataset}"]
    seen = {(r["norm"], r["position"], r["seed"]) for d in done for r in d["records"]}
    decompose_rows({**cmp, "rows": [r for r in cmp["rows"]
                                    if (r["norm"], r["position"], r["seed"]) not in seen]},
                   here, None)
    parts = [json.loads(Path(f).read_text()) for f in (earlier or "").split(",") if f]
    parts += done + ([json.loads(here.read_text())] if here.is_file() else [])
    if not parts:                                   # (this call's come last: they win)
        return
    records = {(r["norm"], r["position"], r["seed"]): r for p in parts for r in p["records"]}
    sections: dict[tuple[str, str], dict] = {}      # per configuration its lowest seed's
    for s in (s for p in parts for s in p["sections"]):
        key = (s["norm"], "any" if s["norm"] == "none" else s["position"])
        if key not in sections or s["seed"] <= sections[key]["seed"]:
            sections[key] = s
    order = {"none": 0, "rms": 1, "layer": 2}
    write_json(path.parent / "decomposition-lm.json", {
        "settings": {**parts[0]["settings"], "seconds": sum(p["settings"]["seconds"]
                                                            for p in parts)},
        "records": sorted(records.values(), key=lambda r: (r["seed"], order[r["norm"]],
                                                            r["position"])),
        "sections": sorted(sections.values(), key=lambda s: (order[s["norm"]],
                                                             s["position"]))})
    print(f"decomposition: {len(records)} models ({time.time() - start:.0f} s)", flush=True)


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
    p.add_argument("--deadline", type=int, default=None,
                   help="seconds for all the jobs together: a job starts with at most what is "
                        "left, and none starts with less than 30 s (default: no deadline)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--n-verify", type=int, default=None)
    p.add_argument("--only", default=None, help="comma-separated job names")
    p.add_argument("--no-decompose", action="store_true")
    p.add_argument("--parallel", type=int, default=None,
                   help="jobs at once (default: all); the CPU threads are shared among them")
    p.add_argument("--stack-every", type=float, default=None,
                   help="comparison parts print their stacks every this many seconds")
    p.add_argument("--configs", default=None,
                   help="only these norm/position pairs of the comparison, e.g. "
                        "rms/post,layer/pre (one process per seed)")
    p.add_argument("--earlier-decomposition", default=None,
                   help="earlier calls' merged decomposition-lm.json files (comma-separated) "
                        "whose records join this call's")
    p.add_argument("--seed-list", default=None,
                   help="only these seeds of the comparison, e.g. 1 (default: 0..seeds-1)")
    p.add_argument("--decompose-only", default=None,
                   help="models only trained and decomposed (verified by an earlier call), "
                        "as SEED:CONFIGS;..., e.g. '0:rms/post,layer/pre;2:rms/post'")
    p.add_argument("--no-sweeps", action="store_true", help="only the comparison")
    p.add_argument("--earlier", default=None,
                   help="earlier calls' merged compare-lm.json files (comma-separated) whose "
                        "rows join this one's (e.g. benchmarks/results/h200-lm/compare-lm.json)")
    p.add_argument("--sweep-values", default=None,
                   help="one process per entry, each only these sweep points, e.g. "
                        "'d_model=512;depth=8;sparsity=0.1,0.3;sparsity=1.0' (other sweeps "
                        "skipped; the parts are merged per sweep)")
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
    q.add_argument("--decompose", action="store_true", help="decompose the models too")
    q.add_argument("--no-verify", action="store_true",
                   help="only train (or reuse) and decompose the models")
    q.add_argument("--stack-every", type=float, default=None,
                   help="print every thread's stack every this many seconds")
    q.set_defaults(func=part)
    r = sub.add_parser("report")
    r.add_argument("results")
    r.add_argument("--dataset", default="text")
    r.set_defaults(func=rebuild)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

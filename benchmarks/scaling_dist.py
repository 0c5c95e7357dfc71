"""Exhaustive ablation split over the ranks of a torchrun launch: wall time per world size.

    # CPU, 1 process (its own threads) then 2 gloo processes of 1 thread each
    python benchmarks/scaling_dist.py --threads 2 --out one.json
    torchrun --standalone --nproc-per-node 2 benchmarks/scaling_dist.py -- --out two.json
    # GPUs (NCCL), one process per GPU
    torchrun --standalone --nproc-per-node 4 benchmarks/scaling_dist.py -- --device cuda \\
        --n 80000 --d-hidden 1024 --backend triton --precision 3xfp16 --out gpu4.json
    # one process: time per layer (the cost model of the split)
    python benchmarks/scaling_dist.py --per-layer

Rank 0 writes `--out` (JSON): the world size, the split (`bilens.ablation.ablation_split`),
each repeat's wall time (from a barrier to the gathered result on every rank) and the best.
Parallel efficiency is `t(1) / (N * t(N))` from two such files (`--compare A.json B.json`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from bilens.ablation import ablation_effects, ablation_split
from bilens.core import distributed
from bilens.experiments.bench import BenchConfig, build


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda (each rank its LOCAL_RANK GPU)")
    p.add_argument("--n", type=int, default=256, help="inputs")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-hidden", type=int, default=256)
    p.add_argument("--norm", default="rms")
    p.add_argument("--position", default="post")
    p.add_argument("--memory", default="4GiB")
    p.add_argument("--backend", default="eager")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--per-layer", action="store_true", help="one process: time per layer")
    p.add_argument("--compare", nargs=2, metavar="JSON", help="efficiency of B against A")
    p.add_argument("--out", help="JSON file (rank 0)")
    argv = sys.argv[1:]
    return p.parse_args(argv[1:] if argv[:1] == ["--"] else argv)   # torchrun ... -- --n N


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(args, model, x, device) -> list[float]:
    kw = dict(memory=args.memory, backend=args.backend, precision=args.precision)
    ablation_effects(model, x, **kw)                                  # warm-up (compiles)
    times = []
    for _ in range(args.repeats):
        distributed.barrier()
        _sync(device)
        t = time.perf_counter()
        ablation_effects(model, x, **kw)
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def per_layer(args, model, x) -> dict:
    kw = dict(memory=args.memory, backend=args.backend, precision=args.precision)
    out = []
    for l in range(args.layers):
        ablation_effects(model, x, layers=[l], **kw)
        t = time.perf_counter()
        for _ in range(args.repeats):
            ablation_effects(model, x, layers=[l], **kw)
        out.append((time.perf_counter() - t) / args.repeats)
    return {"seconds_per_layer": out, "relative_to_layer_0": [t / out[0] for t in out]}


def compare(a: str, b: str) -> None:
    ra, rb = (json.loads(open(f).read()) for f in (a, b))
    speedup = ra["best_s"] / rb["best_s"]
    n = rb["world_size"] / ra["world_size"]
    print(f"{ra['label']} -> {rb['label']}: {ra['best_s']:.3f} s -> {rb['best_s']:.3f} s, "
          f"speedup {speedup:.2f}x, parallel efficiency {speedup / n:.1%} "
          f"(estimated balance {rb['split']['balance']:.3f})")


def main() -> None:
    args = parse()
    if args.compare:
        return compare(*args.compare)
    torch.set_num_threads(args.threads)
    world = distributed.init_if_launched()
    device = distributed.device() if args.device == "cuda" else torch.device("cpu")
    cfg = BenchConfig(n=args.n, n_layers=args.layers, d_model=args.d_model,
                      d_hidden=args.d_hidden, norm=args.norm, position=args.position,
                      device=str(device))
    model, x, _ = build(cfg)
    if args.per_layer:
        print(json.dumps(per_layer(args, model, x), indent=1))
        return
    times = timed_runs(args, model, x, device)
    split = ablation_split(model, x.shape[0], memory=args.memory, backend=args.backend,
                           precision=args.precision)
    label = f"{world.world_size} x {device.type} (threads {args.threads})"
    res = {"label": label, "world_size": world.world_size, "device": str(device),
           "config": vars(args), "split": split, "times_s": times, "best_s": min(times)}
    if world.is_main:
        print(f"{label}: best {min(times):.3f} s of {times}, split {split['jobs_per_rank']} "
              f"jobs, balance {split['balance']:.3f}")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)
    distributed.shutdown()


if __name__ == "__main__":
    main()

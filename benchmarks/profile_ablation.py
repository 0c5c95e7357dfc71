"""Where the time of exhaustive ablation goes: a torch.profiler table of one call.

    python benchmarks/profile_ablation.py --device cuda --n 2000 --precision 3xtf32 --backend triton
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bilens.ablation import ablation_effects
from bilens.experiments.bench import BenchConfig, build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-hidden", type=int, default=1024)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--backend", default="triton", choices=("eager", "compile", "triton"))
    p.add_argument("--rows", type=int, default=18)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = BenchConfig(n=args.n, n_layers=args.layers, d_model=args.d_model,
                      d_hidden=args.d_hidden, device=args.device)
    model, x, _ = build(cfg)
    classes = model(x).argmax(-1)
    def run():
        return ablation_effects(model, x, target=classes, precision=args.precision,
                                backend=args.backend)
    run()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with profile(activities=acts) as prof:
        run()
        if x.is_cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if x.is_cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()

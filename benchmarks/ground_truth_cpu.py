"""Issue 4's must-show: the ground truth for 256 inputs x 4 layers x 512 channels (d_model
256) on the CPU, real network and frozen-norm network, with the float64 check.

    python benchmarks/ground_truth_cpu.py [--checkpoint DIR] [--threads 2] [--n 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from bilens.ablation import ablation_effects
from bilens.experiments.bench import BenchConfig, build
from bilens.experiments.timing import agreement


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--d-hidden", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default="mnist")
    p.add_argument("--check", action="store_true", help="also compare with float64")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = BenchConfig(n=args.n, d_hidden=args.d_hidden, data=args.data)
    model, x, source = build(cfg)
    if args.checkpoint:
        import bilens
        model = bilens.load(args.checkpoint)
        source += f", checkpoint {args.checkpoint}"
    c = model.config
    print(f"{args.n} {source}; {c.n_layers} layers x {c.d_hidden} channels, d_model {c.d_model}, "
          f"{c.norm_position} {c.norm}; {args.threads} threads; {cfg.notes}")
    for frozen in (False, True):
        start = time.perf_counter()
        got = ablation_effects(model, x, target="predicted", frozen_norm=frozen)
        t = time.perf_counter() - start
        line = f"  frozen_norm={frozen!s:5}  {t:6.2f} s  ({got.numel()} effects)"
        if args.check:
            truth = ablation_effects(model.double(), x.double(), target="predicted",
                                     frozen_norm=frozen)
            model.float()
            line += f"  agree with float64 {agreement(got, truth):.1e}"
        print(line, flush=True)


if __name__ == "__main__":
    main()

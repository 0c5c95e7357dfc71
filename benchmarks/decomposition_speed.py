"""How long `bilens.decompose` takes on an MNIST-shaped model (d_in 784, d_model 256,
d_hidden 512, 4 layers, random weights): every layer, all 10 classes, with and without the
faithfulness measurement, on this machine's CPU.

    PYTHONPATH=src python benchmarks/decomposition_speed.py [--threads N] [--n 512]

Prints one line per measurement (best of `--repeats`); the issue asks for < 10 s without
the data measurement.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bilens.analysis.decompose import decompose
from bilens.core.config import ModelConfig
from bilens.core.models.mlp import BilinearNet


def model_for(norm: str, position: str) -> BilinearNet:
    torch.manual_seed(0)
    return BilinearNet(ModelConfig(d_in=784, d_model=256, d_hidden=512, n_layers=4, n_out=10,
                                   norm=norm, norm_position=position)).eval()


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--n", type=int, default=512,
                   help="inputs of the faithfulness measurement (0: skip it)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    x = torch.randn(max(args.n, 1), 784)
    for norm, position in (("none", "post"), ("rms", "post"), ("layer", "pre")):
        model = model_for(norm, position)
        t = best(lambda m=model: decompose(m), args.repeats)
        line = f"{norm}/{position}: decompose 4 layers x 10 classes {t:.2f} s"
        if args.n:
            tf = best(lambda m=model: decompose(m, inputs=x), 1)
            line += f"; with faithfulness on {args.n} inputs {tf:.2f} s"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

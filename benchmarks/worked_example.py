"""The worked example of docs/attribution.md: one input's top channels, predicted and real.

    python benchmarks/worked_example.py runs/digits-rms [--n 2] [--input 0] [--top 5]

For input `--input` of the seeded test subset that `bilens attribute --n N --seed 0` uses,
the `--top` channels of largest |frozen prediction|, in float64: the activation `z`, each
mode's prediction, the real ablation's effect, the effect with every norm held at its clean
statistic, and the drift `ds/s` of the first norm the ablation reaches, measured and by the
seed's formula `(r . delta) / |r|^2`. Target: the predicted class's logit; baseline zero.
"""

from __future__ import annotations

import argparse

import torch

import bilens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=2, help="size of the seeded test subset")
    parser.add_argument("--input", type=int, default=0, help="which input of the subset")
    parser.add_argument("--top", type=int, default=5, help="how many channels")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = bilens.load(args.checkpoint, dtype=torch.float64)
    data = bilens.load_dataset(model.metadata["dataset"], "test", n=args.n, seed=0)
    x = data.x[args.input : args.input + 1]
    result = bilens.verify(model, x, target="predicted", modes=("frozen", "live", "renorm"),
                           circuit_ks=(), progress=False)
    t = {name: value[0].flatten() for name, value in result.tensors.items()
         if name not in ("inputs", "target")}
    d_hidden = model.config.d_hidden
    order = t["predicted.frozen"].abs().topk(args.top).indices.tolist()
    columns = ["z", "frozen", "live", "renorm", "actual", "norms frozen", "ds/s", "formula"]
    keys = ["activation", "predicted.frozen", "predicted.live", "predicted.renorm", "actual",
            "actual_frozen_norm", "drift.measured", "drift.formula"]
    print("channel  " + "".join(f"{c:>13}" for c in columns))
    for flat in order:
        layer, k = divmod(flat, d_hidden)
        print(f"({layer}, {k:>3})" + "".join(f"{t[key][flat].item():>13.4g}" for key in keys))


if __name__ == "__main__":
    main()

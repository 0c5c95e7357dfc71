"""Time `attribute` (every channel of every layer) against one forward pass, same batch, one run.

    python benchmarks/attribution_vs_forward.py                       # random MNIST-shaped model
    python benchmarks/attribution_vs_forward.py --checkpoint runs/mnist --batch 256
    python benchmarks/attribution_vs_forward.py --device cuda --threads 16 --out bench.json

Without a checkpoint the model is randomly initialized at the MNIST shape of the docs
(d_in 784, 4 layers, d_model 256, d_hidden 512, post RMS): the time does not depend on
the weights. Each timing is the median of `--repeats` calls after `--warmup` calls; the
methods are interleaved call by call so that machine load hits them alike. Ratios are
against `forward` (`model(x)` under no_grad, the logits only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bilens.attribution.predict import attribute, attribute_modes
from bilens.core.config import ModelConfig
from bilens.core.models.mlp import BilinearNet

MNIST_SHAPE = dict(d_in=784, d_model=256, d_hidden=512, n_layers=4, n_out=10, norm="rms",
                   norm_position="post")


def build(args: argparse.Namespace) -> tuple[BilinearNet, torch.Tensor, str]:
    dtype = getattr(torch, args.dtype)
    if args.checkpoint:
        import bilens

        model = bilens.load(args.checkpoint, device=args.device, dtype=dtype)
        name = f"checkpoint {args.checkpoint}"
        try:
            dataset = bilens.load_dataset(model.metadata.get("dataset", "mnist"), "test",
                                          n=args.batch)
            return model, dataset.x.to(args.device, dtype), name + f", {dataset.name} test inputs"
        except Exception as err:  # data package missing: timing does not depend on inputs
            name += f" (random inputs: {err.__class__.__name__})"
    else:
        torch.manual_seed(0)
        model = BilinearNet(ModelConfig(**MNIST_SHAPE)).to(args.device, dtype).eval()
        name = "random init, MNIST shape"
    x = torch.randn(args.batch, model.config.d_in, device=args.device, dtype=dtype)
    return model, x, name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--memory", default="4GiB", help="attribution chunk budget")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="also write the timings as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, name = build(args)
    b, mem = args.batch, args.memory

    def sync() -> None:
        if x.is_cuda:
            torch.cuda.synchronize()

    @torch.no_grad()
    def forward() -> None:
        model(x)

    @torch.no_grad()
    def forward_run() -> None:
        model.run(x, check=False)

    cases = {
        "forward (logits)": forward,
        "forward (model.run, all intermediates)": forward_run,
        "attribute frozen, explicit": lambda: attribute(model, x, mode="frozen", memory=mem),
        "attribute live, explicit": lambda: attribute(model, x, mode="live", memory=mem),
        "attribute renorm (live + exact first norm)": lambda: attribute(model, x, memory=mem),
        "attribute frozen, autograd": lambda: attribute(model, x, mode="frozen", memory=mem,
                                                        method="autograd"),
        "attribute live, autograd": lambda: attribute(model, x, mode="live", memory=mem,
                                                      method="autograd"),
        "attribute frozen+live, explicit (one forward)": lambda: attribute_modes(
            model, x, modes=("frozen", "live"), memory=mem),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(args.warmup + args.repeats):
        for key, fn in cases.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= args.warmup:
                times[key].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    base = median["forward (logits)"]
    cfg = model.config
    print(f"model: {name}; {cfg.n_layers} layers, d_model {cfg.d_model}, d_hidden "
          f"{cfg.d_hidden}, {cfg.norm_position} {cfg.norm}; batch {b}, {args.dtype}, "
          f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"median of {args.repeats} calls (interleaved), every channel = "
          f"{cfg.n_layers * cfg.d_hidden} per input")
    print(f"{'':48} {'ms':>9} {'x forward':>10}")
    for key, t in median.items():
        print(f"{key:48} {1e3 * t:9.3f} {t / base:10.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": name, "batch": b, "dtype": args.dtype, "device": args.device,
                       "threads": torch.get_num_threads(), "median_s": median,
                       "ratio_to_forward": {k: t / base for k, t in median.items()}}, f, indent=2)


if __name__ == "__main__":
    main()

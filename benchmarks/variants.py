"""Exhaustive ablation variants on one model and inputs: precision x fused steps x chunk size.

`backend` says how the 3xTF32 matmuls run: `eager`/`compile` (cuBLAS products of
split factors, the elementwise steps eager or compiled between them) or `triton` (the Triton GEMMs
of `bilens.triton_ops`, the bilinear steps fused into them).

    python benchmarks/variants.py --device cuda --n 10000 --d-hidden 1024 --out variants.json

Every variant is checked against the float64 result (normwise, 1e-5) before its time counts;
`tf32` (one TF32 product, not split) is included to show why it is not used.
"""

from __future__ import annotations

import argparse
import json

import torch

import bilens.ablation._engine.steps
from bilens.ablation import ablation_effects
from bilens.experiments.bench import BenchConfig, ablation_flops, build
from bilens.experiments.timing import agreement, timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-hidden", type=int, default=512)
    p.add_argument("--memory", default="1GiB,4GiB,16GiB")
    p.add_argument("--data", default="random")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cfg = BenchConfig(n=args.n, n_layers=args.layers, d_model=args.d_model,
                      d_hidden=args.d_hidden, device=args.device, data=args.data)
    model, x, source = build(cfg)
    device = torch.device(args.device)
    classes = model(x).argmax(-1)
    m64 = type(model)(model.config).to(device, torch.float64)
    m64.load_state_dict(model.state_dict())
    truth = ablation_effects(m64, x.double(), target=classes)
    del m64
    flops = ablation_flops(model.config, args.n)
    cuda = device.type == "cuda"
    variants = [("fp32", "eager"), ("3xtf32", "eager")]
    if cuda:
        variants += [("fp32", "compile"), ("3xtf32", "compile")]
        if bilens.ablation.resolve_backend("triton", "3xtf32", device,
                                           torch.float32)[0] == "triton":
            variants += [("3xtf32", "triton"), ("3xfp16", "triton")]
    results = []
    print(f"{args.n} {source}; {args.layers} x {args.d_hidden} channels, d_model {args.d_model}; "
          f"{flops:.3g} fp32-equivalent flops")
    for memory in args.memory.split(","):
        for prec, backend in variants:
            t, got, peak = timed(lambda p=prec, b=backend, m=memory: ablation_effects(
                model, x, target=classes, precision=p, backend=b, memory=m), device, 3)
            err = agreement(got, truth)
            row = dict(precision=prec, backend=backend, memory=memory, seconds=t,
                       agree=err, ok=err <= 1e-5, tflops=flops / t / 1e12, peak_gib=peak / 2**30)
            results.append(row)
            print(f"  {prec:7} {backend:8} memory={memory:6} "
                  f"{t * 1e3:9.1f} ms  agree {err:.2e}  {flops / t / 1e12:6.1f} TFLOP/s  "
                  f"peak {peak / 2**30:.2f} GiB")
    if cuda:   # plain TF32 (not split): fast but not float32-accurate
        torch.backends.cuda.matmul.allow_tf32 = True
        t, got, _ = timed(lambda: ablation_effects(model, x, target=classes), device, 3)
        torch.backends.cuda.matmul.allow_tf32 = False
        err = agreement(got, truth)
        results.append(dict(precision="tf32", backend="eager", memory="4GiB", seconds=t, agree=err,
                            ok=err <= 1e-5, tflops=flops / t / 1e12))
        print(f"  tf32 (unsplit)                 {t * 1e3:9.1f} ms  agree {err:.2e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"inputs": source, "n": args.n, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

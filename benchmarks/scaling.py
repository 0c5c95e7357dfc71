"""Scaling of exhaustive ablation and attribution with d_hidden (4 layers) and depth.

    python benchmarks/scaling.py --device cuda --n 2000 --precision 3xtf32 --backend triton \
        --out scaling.json

Per row: one forward, attribution (frozen), exhaustive ablation (every channel), its
fp32-equivalent TFLOP/s, and agreement with float64 on the first 128 inputs.
"""

from __future__ import annotations

import argparse
import json

import torch

from bilens.ablation import ablation_effects
from bilens.experiments.bench import BenchConfig, ablation_flops, build
from bilens.experiments.timing import agreement, timed


def one(cfg: BenchConfig, precision: str, backend: str) -> dict:
    device = torch.device(cfg.device)
    model, x, _ = build(cfg)
    with torch.no_grad():
        t_fwd, logits, _ = timed(lambda: model(x), device, 5)
    classes = logits.argmax(-1)
    try:
        from bilens.attribution.predict import attribute
        t_attr = timed(lambda: attribute(model, x, target="predicted", mode="frozen"), device, 5)[0]
    except ImportError:
        t_attr = float("nan")
    t, got, peak = timed(lambda: ablation_effects(model, x, target=classes, precision=precision,
                                                  backend=backend), device, 2)
    m64 = type(model)(model.config).to(device, torch.float64)
    m64.load_state_dict(model.state_dict())
    sub = slice(0, 128)
    truth = ablation_effects(m64, x[sub].double(), target=classes[sub])
    flops = ablation_flops(model.config, cfg.n)
    return dict(n_layers=cfg.n_layers, d_hidden=cfg.d_hidden, d_model=cfg.d_model, n=cfg.n,
                forward_ms=t_fwd * 1e3, attribute_ms=t_attr * 1e3, ablation_ms=t * 1e3,
                ablation_over_forward=t / t_fwd, tflops=flops / t / 1e12,
                agree=agreement(got[sub], truth), peak_gib=peak / 2**30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--hidden", default="256,512,1024,2048,4096")
    p.add_argument("--depths", default="1,2,3,4,6,8")
    p.add_argument("--depth-hidden", type=int, default=1024)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--backend", default="triton", choices=("eager", "compile", "triton"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    shapes = [(4, int(h)) for h in args.hidden.split(",")]
    shapes += [(int(n), args.depth_hidden) for n in args.depths.split(",")
               if (int(n), args.depth_hidden) not in shapes]
    rows = []
    print(f"{'layers':>6} {'d_hidden':>8} {'forward ms':>10} {'attr ms':>8} {'ablation ms':>11} "
          f"{'x fwd':>7} {'TFLOP/s':>8} {'agree':>9} {'peak GiB':>8}")
    for n_layers, d_hidden in shapes:
        cfg = BenchConfig(n=args.n, n_layers=n_layers, d_model=args.d_model, d_hidden=d_hidden,
                          device=args.device)
        r = one(cfg, args.precision, args.backend)
        rows.append(r)
        print(f"{n_layers:6d} {d_hidden:8d} {r['forward_ms']:10.2f} {r['attribute_ms']:8.2f} "
              f"{r['ablation_ms']:11.1f} {r['ablation_over_forward']:7.0f} {r['tflops']:8.1f} "
              f"{r['agree']:9.1e} {r['peak_gib']:8.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"precision": args.precision, "backend": args.backend, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()

"""Attribution of every channel against captum's `LayerGradientXActivation`, over batch sizes.

    python benchmarks/attribution_vs_captum.py --threads 1 \
        --out benchmarks/results/cpu/attribution-vs-captum.json
    python benchmarks/attribution_vs_captum.py --device cuda --batches 100,1000,10000 --profile

For each batch size, one round-robin run (`bilens.experiments.bench.interleaved`) of: one
forward pass (logits), `attribute` frozen and live, captum with the four layers in one call
(one forward and one backward: what any exact method must do), and captum called once per
layer. The
ratios show where captum's per-call overhead dominates (small batches: large speedups) and
where the matmuls do (large batches: the speedup tends to captum's cost in forwards divided
by ours, both of which are bounded below by one forward plus one backward).
The model is randomly initialized at the issue's MNIST shape unless sizes are given.
`--profile` adds a torch.profiler table of one `attribute` call and one forward at the
largest batch (where the time goes).
"""

from __future__ import annotations

import argparse
import json

import torch

from bilens.attribution.predict import attribute
from bilens.experiments.bench import BenchConfig, build
from bilens.experiments.competitors import ZNet, captum_gxa
from bilens.experiments.timing import agreement, interleaved, machine

ROWS = ("forward", "attribute frozen", "attribute live", "captum, one call",
        "captum, per layer")


def measure(cfg: BenchConfig) -> dict:
    """One round-robin timing of every row for `cfg.n` inputs; seconds and ratios."""
    device = torch.device(cfg.device)
    model, x, _ = build(cfg)
    with torch.no_grad():
        classes = model(x).argmax(-1)
    znet = ZNet(model)
    fns = dict(zip(ROWS, (
        lambda: model(x),
        lambda: attribute(model, x, target="predicted", mode="frozen"),
        lambda: attribute(model, x, target="predicted", mode="live"),
        lambda: captum_gxa(znet, x, classes),
        lambda: captum_gxa(znet, x, classes, per_layer=True)), strict=True))
    got = interleaved(fns, device, cfg.repeats)
    seconds = {k: got[k][0] for k in ROWS}
    err = max(agreement(-got["attribute live"][1], got[k][1]) for k in ROWS[3:])
    if err > 1e-4:
        raise SystemExit(f"captum and bilens disagree ({err:.2e}) at n={cfg.n}")
    return {"n": cfg.n, "seconds": seconds, "agree": err,
            "over_forward": {k: t / seconds["forward"] for k, t in seconds.items()},
            "speedup_vs_captum": seconds["captum, one call"] / seconds["attribute live"],
            "speedup_vs_captum_per_layer": seconds["captum, per layer"]
            / seconds["attribute live"]}


def profile_largest(cfg: BenchConfig, rows: int = 14) -> None:
    """Print torch.profiler tables of one forward and one live `attribute` call."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(cfg.device)
    model, x, _ = build(cfg)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    sort = "cuda_time_total" if x.is_cuda else "self_cpu_time_total"
    for name, fn in (("forward", lambda: model(x)),
                     ("attribute live", lambda: attribute(model, x, target="predicted",
                                                          mode="live"))):
        with torch.no_grad():
            fn()
            with profile(activities=activities) as prof:
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
        print(f"\n{name}, n={cfg.n}")
        print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", default="1,8,32,128,512,2048")
    p.add_argument("--d-hidden", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="also write the table as JSON")
    p.add_argument("--profile", action="store_true", help="profile the largest batch")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{args.layers} layers x {args.d_hidden} channels, d_model {args.d_model}, post rms; "
          f"{args.device}, {torch.get_num_threads()} threads; ms (x forward)")
    print(f"{'n':>6} {'forward':>9} {'frozen':>16} {'live':>16} {'captum 1 call':>18} "
          f"{'captum/layer':>18} {'vs 1 call':>9} {'vs/layer':>9}")
    for n in (int(b) for b in args.batches.split(",")):
        cfg = BenchConfig(device=args.device, n=n, d_hidden=args.d_hidden,
                          d_model=args.d_model, n_layers=args.layers, repeats=args.repeats)
        r = measure(cfg)
        rows.append(r)
        s, f = r["seconds"], r["over_forward"]
        cells = " ".join(f"{1e3 * s[k]:9.2f} ({f[k]:5.2f})" for k in ROWS[1:])
        print(f"{n:6d} {1e3 * s['forward']:9.2f} {cells} {r['speedup_vs_captum']:9.2f} "
              f"{r['speedup_vs_captum_per_layer']:9.2f}")
    if args.profile:
        profile_largest(cfg)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"machine": machine(torch.device(args.device)), "args": vars(args),
                       "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()

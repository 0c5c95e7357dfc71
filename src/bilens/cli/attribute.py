"""`bilens attribute`: every channel's predicted ablation effect on N inputs (docs/spec.md §8, §7).

    bilens attribute runs/digits --dataset digits --split test --n 100 \\
        --target predicted --mode renorm,frozen --out attr.safetensors --top 5

writes `attr.safetensors` (inputs, target or label, activation, predicted or
predicted.frozen/predicted.live) and `attr.json` (a summary), atomically.
"""

from __future__ import annotations

import argparse
import time

from bilens.cli._inputs import add_input_arguments, check_baseline, load_inputs, parse_modes
from bilens.core.errors import BilensError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attribute", help="predict every channel's ablation effect (one backward pass)",
        description="Attribute every channel of every layer through the linearized network "
                    "and write docs/spec.md §7's result file.")
    add_input_arguments(p, n_default=100, n_help="number of inputs (seeded subset)")
    p.add_argument("--mode", default="renorm",
                   help="renorm | live | frozen, or several comma-separated, e.g. frozen,live "
                        "(default: renorm, the most faithful mode measured; --top ranks by the "
                        "first one given)")
    p.add_argument("--out", required=True, metavar="FILE", help="output .safetensors file")
    p.add_argument("--top", type=int, default=0, metavar="K",
                   help="print, per input, the K channels of largest |predicted|")
    p.add_argument("--memory", default="4GiB",
                   help="bound on one internal chunk's intermediates (default 4GiB)")
    p.add_argument("--method", default=None, help="explicit | autograd (same numbers)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    import bilens
    from bilens.analysis.results import save_results
    from bilens.attribution.predict import DEFAULT_METHOD, attribute_modes

    modes = parse_modes(args.mode, "--mode")
    check_baseline(args)
    if args.top < 0:
        raise BilensError(f"--top: expected K >= 0, got {args.top}")
    if not str(args.out).endswith(".safetensors"):
        raise BilensError(f"--out: expected a .safetensors file name, got {args.out!r}")
    method = args.method or DEFAULT_METHOD

    model, dataset, data, reference = load_inputs(args)
    cfg = model.config

    start = time.perf_counter()
    out = attribute_modes(model, data.x, target=args.target, modes=modes,
                          baselines=args.baseline, labels=data.y, reference=reference,
                          memory=args.memory, method=method)
    seconds = time.perf_counter() - start

    run_ = out.run
    tensors = {"inputs": data.x.to(model.dtype), **out.target.to_tensors(),
               "activation": run_.z}
    if len(modes) == 1:
        tensors["predicted"] = out.predicted[modes[0]]
    else:
        tensors.update({f"predicted.{m}": p for m, p in out.predicted.items()})
    if out.baselines is not None:
        tensors["baseline"] = out.baselines[0]
    summary = {
        "command": "attribute",
        "version": bilens.__version__,
        "checkpoint": str(args.checkpoint),
        "config": cfg.to_dict(),
        "dataset": dataset, "split": args.split, "n": len(data.y), "seed": args.seed,
        "target": args.target, "modes": modes, "baseline": args.baseline,
        "reference_n": None if reference is None else len(reference),
        "method": method, "dtype": str(model.dtype).removeprefix("torch."),
        "seconds": round(seconds, 4),
        "accuracy": (run_.logits.argmax(-1).cpu() == data.y).double().mean().item(),
        "predicted_abs_mean_per_layer": {
            m: p.abs().mean(dim=(0, 2)).tolist() for m, p in out.predicted.items()},
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
    }
    path, json_path = save_results(args.out, tensors, summary)
    if args.top:
        _print_top(out, data.y, modes, args.top, args.target)
    print(f"wrote {path} ({len(data.y)} inputs x {cfg.n_layers} layers x {cfg.d_hidden} channels,"
          f" mode {','.join(modes)}, {seconds:.3f} s) and {json_path}")
    return 0


def _print_top(out, labels, modes: list[str], k: int, target: str) -> None:
    """Per input, the `k` channels of largest |predicted| (first mode), as a table."""
    first = out.predicted[modes[0]]
    n, n_layers, d_hidden = first.shape
    k = min(k, n_layers * d_hidden)
    f = out.target(out.run.logits)
    order = first.abs().flatten(1).topk(k, dim=1).indices            # [N, k]
    head = f"{'layer':>5} {'channel':>7} {'activation':>11}" + "".join(
        f" {'pred.' + m:>12}" for m in modes)
    for i in range(n):
        print(f"input {i}: label {labels[i].item()}, predicted class "
              f"{out.run.logits[i].argmax().item()}, target {target} f = {f[i].item():.4g}")
        print(head)
        for flat in order[i].tolist():
            layer, channel = divmod(flat, d_hidden)
            row = f"{layer:>5} {channel:>7} {out.run.z[i, layer, channel].item():>11.4g}"
            row += "".join(f" {out.predicted[m][i, layer, channel].item():>12.4g}" for m in modes)
            print(row)

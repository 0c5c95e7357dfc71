"""`bilens attribute`: every channel's predicted ablation effect on N inputs (docs/spec.md §8, §7).

    bilens attribute runs/digits --dataset digits --split test --n 100 \\
        --target predicted --modes renorm,frozen --out attr.safetensors --top 5

writes `attr.safetensors` (inputs, target or label, activation, predicted or
predicted.frozen/predicted.live) and `attr.json` (a summary), atomically. `--mode` is the
same option as `--modes` (docs/spec.md §8 names it so). It never writes over a file it did
not write as an attribution result, nor into a checkpoint directory, and replaces an
earlier result only with `--force`.
"""

from __future__ import annotations

import argparse
import time

from bilens.cli._common import add_force, add_out, count, setup_threads
from bilens.cli._inputs import add_input_arguments, check_baseline, load_inputs, parse_modes
from bilens.core.errors import BilensError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attribute", help="predict every channel's ablation effect (one backward pass)",
        description="Attribute every channel of every layer through the linearized network "
                    "and write docs/spec.md §7's result file.")
    add_input_arguments(p, n_default=100, n_help="number of inputs, a seeded subset")
    p.add_argument("--modes", "--mode", dest="modes", default="renorm", metavar="MODES",
                   help="renorm | live | frozen, or several comma-separated, e.g. frozen,live; "
                        "--mode is the same option (default: renorm, the most faithful mode "
                        "measured; --top ranks by the first one given)")
    add_out(p, "output .safetensors file (its summary goes beside it as .json)",
            metavar="FILE")
    add_force(p, "an earlier attribution result at --out")
    p.add_argument("--top", type=count, default=None, metavar="K",
                   help="print, per input, the K channels of largest |predicted| (default: "
                        "print none)")
    p.add_argument("--memory", default="4GiB",
                   help="bound on one internal chunk's intermediates (default: 4GiB)")
    p.add_argument("--method", default=None,
                   help="explicit | autograd, the same numbers (default: explicit)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    import bilens
    from bilens.analysis.results import check_result_file, save_results
    from bilens.attribution.predict import DEFAULT_METHOD, attribute_modes
    from bilens.core.device import resolve_device

    modes = parse_modes(args.modes, "--modes")
    check_baseline(args)
    if not str(args.out).endswith(".safetensors"):
        raise BilensError(f"--out: expected a .safetensors file name, got {args.out!r}")
    check_result_file(args.out, command="attribute", overwrite=args.force)   # before the work
    method = args.method or DEFAULT_METHOD
    setup_threads(args)
    device = resolve_device(args.device)

    model, dataset, data, reference = load_inputs(args)
    model.to(device)
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
        "dataset": dataset, "split": data.split, "n": len(data), "seed": args.seed,
        "target": args.target, "modes": modes, "baseline": args.baseline,
        "reference_n": None if reference is None else len(reference),
        "method": method, "dtype": str(model.dtype).removeprefix("torch."),
        "seconds": round(seconds, 4),
        "accuracy": None if data.y is None else
                    (run_.logits.argmax(-1).cpu() == data.y).double().mean().item(),
        "predicted_abs_mean_per_layer": {
            m: p.abs().mean(dim=(0, 2)).tolist() for m, p in out.predicted.items()},
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
    }
    path, json_path = save_results(args.out, tensors, summary, overwrite=args.force)
    if args.top:
        _print_top(out, data.y, modes, args.top, args.target)
    print(f"wrote {path} ({len(data)} inputs x {cfg.n_layers} layers x {cfg.d_hidden} channels,"
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
        label = "none" if labels is None else labels[i].item()
        print(f"input {i}: label {label}, predicted class "
              f"{out.run.logits[i].argmax().item()}, target {target} f = {f[i].item():.4g}")
        print(head)
        for flat in order[i].tolist():
            layer, channel = divmod(flat, d_hidden)
            row = f"{layer:>5} {channel:>7} {out.run.z[i, layer, channel].item():>11.4g}"
            row += "".join(f" {out.predicted[m][i, layer, channel].item():>12.4g}" for m in modes)
            print(row)

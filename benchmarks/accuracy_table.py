"""Test accuracy on a dataset for norm none/rms/layer x position post/pre at one equal
budget (same architecture, epochs, batch size, learning rate, seeds): the first column of
the seed's comparison table ("no norm ~9% worse, RMS between none and LayerNorm").

    python benchmarks/accuracy_table.py --dataset mnist --epochs 10 --seeds 0,1 \
        --out runs/accuracy_table.json

Prints a markdown table (mean and per-seed test accuracy, train accuracy, active fraction,
seconds) and writes every run to --out as JSON after each one, so an interrupted table
keeps what it has. A run that diverges is recorded as such, not retried.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bilens.core.config import ModelConfig
from bilens.core.data import load_dataset
from bilens.core.errors import BilensError
from bilens.core.io import write_json
from bilens.training.train import TrainConfig, train

NORMS = ("none", "rms", "layer")
POSITIONS = ("post", "pre")


def run_table(args: argparse.Namespace) -> list[dict]:
    """Train every norm x position x seed; return one record per run."""
    train_set, test_set = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    seeds = [int(s) for s in args.seeds.split(",")]
    norms = [n for n in NORMS if n in args.norms.split(",")]
    positions = [p for p in POSITIONS if p in args.positions.split(",")]
    records: list[dict] = []
    for seed in seeds:  # seed outermost: a table cut short still has whole seeds
        for position in positions:
            for norm in norms:
                cfg = ModelConfig(d_in=train_set.d_in, d_model=args.d_model,
                                  d_hidden=args.d_hidden, n_layers=args.layers,
                                  n_out=train_set.n_classes, norm=norm, norm_position=position)
                tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                 weight_decay=args.weight_decay, seed=seed, device=args.device)
                record = {"norm": norm, "position": position, "seed": seed}
                start = time.perf_counter()
                try:
                    result = train(cfg, tc, (train_set, test_set), progress=False)
                    record.update(test_accuracy=result.test_accuracy,
                                  train_accuracy=result.train_accuracy,
                                  active_fraction=result.active_fraction,
                                  history=[h["test_accuracy"] for h in result.history])
                except BilensError as err:
                    record.update(diverged=str(err))
                record["seconds"] = time.perf_counter() - start
                records.append(record)
                print(json.dumps({k: v for k, v in record.items() if k != "history"}),
                      flush=True)
                if args.out:
                    write_json(args.out, {"args": vars(args), "device": _device_name(args),
                                          "runs": records})
    return records


def markdown(records: list[dict]) -> str:
    """One row per norm x position: mean (per-seed) test accuracy, train accuracy, active."""
    lines = ["| position | norm | test accuracy, mean (per seed) | train accuracy | "
             "active fraction | seconds / run |", "| --- | --- | --- | --- | --- | --- |"]
    for position in POSITIONS:
        for norm in NORMS:
            runs = [r for r in records if (r["norm"], r["position"]) == (norm, position)]
            if not runs:
                continue
            ok = [r for r in runs if "test_accuracy" in r]
            seeds = ", ".join(f"{100 * r['test_accuracy']:.2f}" if "test_accuracy" in r
                              else "diverged" for r in runs)
            mean = (f"{100 * statistics.mean(r['test_accuracy'] for r in ok):.2f}%"
                    if ok else "diverged")
            train_acc = (f"{100 * statistics.mean(r['train_accuracy'] for r in ok):.2f}%"
                         if ok else "-")
            active = f"{statistics.mean(r['active_fraction'] for r in ok):.3f}" if ok else "-"
            secs = statistics.mean(r["seconds"] for r in runs)
            lines.append(f"| {position} | {norm} | {mean} ({seeds}) | {train_acc} | {active} | "
                         f"{secs:.0f} |")
    return "\n".join(lines)


def _device_name(args: argparse.Namespace) -> str:
    if args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-hidden", type=int, default=512)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--seeds", default="0")
    p.add_argument("--device", default="auto")
    p.add_argument("--norms", default=",".join(NORMS), help="subset of none,rms,layer")
    p.add_argument("--positions", default=",".join(POSITIONS), help="subset of post,pre")
    p.add_argument("--out", default=None, help="JSON file for every run")
    p.add_argument("--markdown-from", default=None,
                   help="only print the table of existing --out JSON files (comma-separated)")
    args = p.parse_args(argv)
    if args.markdown_from:
        files = args.markdown_from.split(",")
        runs = [r for f in files for r in json.loads(Path(f).read_text())["runs"]]
        print(markdown(runs))
        return 0
    print(f"device: {_device_name(args)}", flush=True)
    print(markdown(run_table(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

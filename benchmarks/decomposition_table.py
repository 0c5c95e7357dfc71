"""The weight-based decomposition table: none / rms / layer x post / pre x seeds, per dataset.

    python benchmarks/decomposition_table.py --datasets mnist,fashion-mnist --seeds 3 \
        --cache runs/cache --out runs/decomposition

For every configuration and seed it trains the `bilens compare` model of the preset
(d_model 256, d_hidden 512, 4 layers on MNIST and Fashion-MNIST; the same cache keys, so
models `bilens compare` trained are reused from `--cache`), decomposes every layer for all
classes, and measures faithfulness on `--n` test inputs (bilens.analysis
.eigen_faithfulness). It writes to `--out`:

- `records.json`: one record per model (config, seed, accuracy, the full faithfulness),
  rewritten after each model, so an interrupted run keeps what it has
- `decomposition_table.json` / `.md`: mean ± sd over seeds per configuration (last layer:
  eigenspace overlap frozen vs live norm, truncation error frozen / live at k = 1, 4, 16,
  the direct-path share) and the verdict of "normalization leaves weight-based features
  intact" per dataset (bilens.experiments.decomposition)
- `figures/<dataset>-<norm>-<position>/`: the first seed's spectrum, eigenvector images
  and faithfulness curves; `figures/<dataset>-faithfulness_compare.png`: all configs

Offline: data come from `BILENS_DATA_DIR` (`benchmarks/export_data.py`). A quick local
check: `--datasets digits --seeds 1 --epochs 2 --n 64`. To split the work over several
calls, run each with its own `--datasets` / `--first-seed` / `--seeds` and `--out`, then
`--merge OUT1/records.json,OUT2/records.json --out OUT` writes the combined table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bilens.analysis.decompose import decompose
from bilens.core.io import write_json
from bilens.experiments.compare import Runner, compare_specs, preset_spec
from bilens.experiments.decomposition import KS, claim_features_intact, decomposition_table
from bilens.report.decomposition import plot_faithfulness_compare, write_figures
from bilens.training.train import resolve_device

COLUMNS = [f"overlap@{k}" for k in KS] + [f"frozen@{k}" for k in KS] + \
    [f"live@{k}" for k in KS] + ["direct_share_total"]


def measure(runner: Runner, spec: Any, n: int, stability_n: int, device: str,
            figures: Path | None) -> dict[str, Any]:
    """Train or reuse one model, decompose it, and return its record."""
    model, info = runner.model(spec)
    test = runner.dataset(spec.dataset, "test")
    x = test.x[:n]
    start = time.perf_counter()
    dec = decompose(model.to(device), inputs=x.to(device), stability_n=stability_n)
    seconds = time.perf_counter() - start
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        write_figures(dec, figures, model=model, dataset=spec.dataset)
    model.cpu()
    cfg = model.config
    return {"dataset": spec.dataset, "norm": cfg.norm, "position": cfg.norm_position,
            "seed": int(spec.train.get("seed", 0)), "d_model": cfg.d_model,
            "n_layers": cfg.n_layers, "test_accuracy": info.get("test_accuracy"),
            "model_dir": info.get("model_dir"), "decompose_seconds": round(seconds, 2),
            "faithfulness": dec.faithfulness}


def _cell(row: dict[str, Any], name: str) -> str:
    mean, sd = row.get(name, math.nan), row.get(f"{name}_sd", math.nan)
    if not math.isfinite(mean):
        return "n/a"
    pct = not name.startswith("overlap")
    text = f"{100 * mean:.1f}%" if pct else f"{mean:.3f}"
    if math.isfinite(sd):
        text += f" ± {100 * sd:.1f}" if pct else f" ± {sd:.3f}"
    return text


def markdown(table: list[dict[str, Any]], claims: list[dict[str, Any]]) -> str:
    """The table and the verdicts as Markdown."""
    head = ["dataset", "norm", "position", "seeds", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in table:
        lines.append("| " + " | ".join([r["dataset"], r["norm"], r["position"],
                                        str(r["n_seeds"]), *(_cell(r, c) for c in COLUMNS)])
                     + " |")
    lines += ["", "overlap@k: top-k eigenspace overlap of the last layer's frozen and live-norm "
              "interaction matrices (1 = same features); frozen@k / live@k: the target's error "
              "under the last layer's rank-k truncation, frozen statistics / every norm live, "
              "relative to the layer's direct contribution; direct_share_total: share of the "
              "target's change (vs the mean input) carried by the direct paths.", ""]
    for c in claims:
        lines.append(f"- **{c['dataset']}**: *{c['claim']}*: **{c['verdict']}**. "
                     f"{c['measured']}. Rule: {c['rule']}. {c['why']}".rstrip())
    return "\n".join(lines) + "\n"


def summarize(records: list[dict[str, Any]], out: Path) -> None:
    table = decomposition_table(records)
    claims = [{**claim_features_intact(records, d), "dataset": d}
              for d in sorted({r["dataset"] for r in records})]
    for c in claims:
        c["numbers"].pop("rows", None)          # the table holds them
    write_json(out / "decomposition_table.json", {"table": table, "claims": claims})
    (out / "decomposition_table.md").write_text(markdown(table, claims))
    for d in sorted({r["dataset"] for r in records}):
        png = plot_faithfulness_compare([r for r in records if r["dataset"] == d])
        (out / "figures" / f"{d}-faithfulness_compare.png").write_bytes(png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="mnist,fashion-mnist")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="to split seeds over calls")
    p.add_argument("--norms", default="none,rms,layer")
    p.add_argument("--positions", default="post,pre")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--d-model", type=int, default=None, help="override the preset (tests)")
    p.add_argument("--d-hidden", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--n", type=int, default=512, help="test inputs of the faithfulness")
    p.add_argument("--stability-n", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--cache", default="runs/cache", help="model cache (Runner's cache_dir)")
    p.add_argument("--force", action="store_true", help="retrain cached models")
    p.add_argument("--merge", default=None, metavar="FILES",
                   help="comma-separated records.json files: only merge them and summarize")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if args.merge:
        merged = [r for f in args.merge.split(",") for r in json.loads(Path(f).read_text())]
        write_json(out / "records.json", merged)
        summarize(merged, out)
        print((out / "decomposition_table.md").read_text())
        return 0
    device = str(resolve_device(args.device))
    runner = Runner(args.cache, force=args.force, device=args.device)
    overrides = {k: v for k, v in (("d_model", args.d_model), ("d_hidden", args.d_hidden),
                                   ("n_layers", args.layers)) if v is not None}
    records: list[dict[str, Any]] = []
    for dataset in args.datasets.split(","):
        base = preset_spec(dataset, args.epochs, **overrides)
        for spec in compare_specs(base, args.seeds, args.norms.split(","),
                                  args.positions.split(","), first_seed=args.first_seed):
            first = spec.train.get("seed", 0) == args.first_seed
            name = f"{dataset}-{spec.model['norm']}-{spec.model['norm_position']}"
            rec = measure(runner, spec, args.n, args.stability_n, device,
                          out / "figures" / name if first else None)
            records.append(rec)
            write_json(out / "records.json", records)
            last = rec["faithfulness"]["last_layer"]
            print(f"{name} seed {rec['seed']}: acc {rec['test_accuracy']}, overlap@1,4,16 "
                  f"{[round(v, 3) for v in last['stability']['overlap_mean']]}, decomposed in "
                  f"{rec['decompose_seconds']} s", flush=True)
    summarize(records, out)
    print((out / "decomposition_table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

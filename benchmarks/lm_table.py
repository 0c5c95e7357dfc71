"""The language-model table of docs/language-models.md: held-out loss and perplexity of the
bilinear transformer (SPEC §9) for none/rms/layer x pre/post x 3 seeds on `text` (the King
James Bible) at one equal budget, beside the unigram and bigram baselines, with three
sample continuations of the best model.

    python benchmarks/lm_table.py --out OUT                 # the table (a GPU: ~6 min on an H200)
    python benchmarks/lm_table.py --export .whl/data        # writes .whl/data/kjv.txt

Offline on a machine without the Debian package: export the text first (`--export`), carry
it with the `tokenizers` wheel, and point `BILENS_DATA_DIR` at the folder:

    pip download --no-deps --only-binary=:all: tokenizers -d .whl     # here, once
    run(command="python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl"
                " && PYTHONPATH=/tmp/site:src BILENS_DATA_DIR=.whl/data"
                " python3 benchmarks/lm_table.py --out $OUT", carry=[".whl"])

Writes `OUT/lm_table.json` (every run, the baselines, the samples, the command) and
`OUT/lm_table.md` (the table). Every run trains with the same steps, batch, schedule and
data order; only the norm, its position and the seed change.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from bilens.core.checkpoint import save
from bilens.core.config import TransformerConfig
from bilens.core.lm_data import KJV_FILE, kjv_chapters, load_lm_data
from bilens.core.sampling import continue_text
from bilens.training.lm import LMTrainConfig, train_lm
from bilens.training.ngram import ngram_losses

PROMPTS = ("And God said,", "In the beginning", "The LORD is my shepherd;")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--export", default=None, metavar="DIR",
                   help=f"only write DIR/{KJV_FILE} (the preprocessed text) and exit")
    p.add_argument("--dataset", default="text", help="text | FILE")
    p.add_argument("--norms", default="none,rms,layer")
    p.add_argument("--positions", default="pre,post")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=1500, help="the one budget of every run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA too")
    p.add_argument("--sample-tokens", type=int, default=60)
    p.add_argument("--save-best", action="store_true", help="also write OUT/best (checkpoint)")
    return p.parse_args(argv)


def export(directory: str) -> Path:
    """Write the preprocessed King James Bible (chapters apart by a blank line)."""
    path = Path(directory) / KJV_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(kjv_chapters()), encoding="utf-8")
    return path


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(runs: list[dict], base: dict[str, float]) -> tuple[str, dict]:
    """The Markdown table (mean ± std over seeds) and the best configuration's summary."""
    rows, groups = [], {}
    for r in runs:
        groups.setdefault((r["norm"], r["position"]), []).append(r)
    lines = ["| norm | position | held-out loss (nats) | perplexity | seeds | s / run |",
             "| --- | --- | --- | --- | --- | --- |"]
    for (norm, pos), rs in groups.items():
        loss, sd = _mean_std([r["val_loss"] for r in rs])
        ppl, ppl_sd = _mean_std([r["perplexity"] for r in rs])
        rows.append((loss, norm, pos))
        lines.append(f"| {norm} | {pos} | {loss:.4f} ± {sd:.4f} | {ppl:.2f} ± {ppl_sd:.2f} | "
                     f"{len(rs)} | {statistics.fmean(r['wall_time'] for r in rs):.1f} |")
    for name in ("unigram", "bigram"):
        lines.append(f"| {name} baseline | | {base[name]:.4f} | {math.exp(base[name]):.2f} | | |")
    loss, norm, pos = min(rows)
    best = {"norm": norm, "position": pos, "val_loss": loss,
            "below_bigram_nats": base["bigram"] - loss,
            "below_bigram_percent": 100 * (base["bigram"] - loss) / base["bigram"]}
    lines.append("")
    lines.append("With no norm, pre- and post-norm are the same network (N is the identity), "
                 "so their rows agree.")
    lines.append("")
    lines.append(f"Best (lowest mean): {norm} {pos}, {loss:.4f} nats, "
                 f"{best['below_bigram_nats']:.4f} nats ({best['below_bigram_percent']:.1f}%) "
                 f"below the bigram model.")
    return "\n".join(lines) + "\n", best


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.export:
        print(f"wrote {export(args.export)}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_lm_data(args.dataset, args.seq_len, vocab_size=args.vocab_size)
    print(f"data: {len(data.train)} training tokens, {data.test.numel()} held out, vocab "
          f"{data.vocab_size} ({time.perf_counter() - t0:.1f} s)", flush=True)
    base = ngram_losses(data.train, data.test, data.vocab_size)
    runs, best_of = [], {}
    for norm in args.norms.split(","):
        for pos in args.positions.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg = TransformerConfig(vocab_size=data.vocab_size, n_ctx=args.seq_len,
                                        d_model=args.d_model, d_hidden=args.d_hidden,
                                        n_layers=args.layers, n_heads=args.heads, norm=norm,
                                        norm_position=pos)
                tc = LMTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                   seed=seed, device=args.device, bf16=not args.no_bf16)
                res = train_lm(cfg, tc, data, progress=False, baselines=base)
                run = {"norm": norm, "position": pos, "seed": seed, "val_loss": res.val_loss,
                       "perplexity": res.perplexity, "accuracy": res.accuracy,
                       "wall_time": res.wall_time, "tokens_per_second": res.tokens_per_second}
                runs.append(run)
                print(json.dumps(run), flush=True)
                key = (norm, pos)
                if key not in best_of or res.val_loss < best_of[key].metadata["val_loss"]:
                    best_of[key] = res.model.cpu()     # the best seed of each configuration
    md, best = table(runs, base)
    best_model = best_of[(best["norm"], best["position"])]      # of the best mean loss
    samples = [{"prompt": p, "temperature": 0.7, "seed": i,
                "continuation": continue_text(best_model, p, args.sample_tokens, 0.7, seed=i)}
               for i, p in enumerate(PROMPTS)]
    cfg = best_model.config
    md += "\nSamples from the best run (" + f"{cfg.norm} {cfg.norm_position}, seed " \
          f"{best_model.metadata['seed']}, temperature 0.7):\n\n"
    md += "".join(f"- **{s['prompt']}**{s['continuation']!r}\n" for s in samples)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    record = {"command": " ".join([sys.executable, *sys.argv]), "args": vars(args),
              "device": gpu, "torch": torch.__version__, "runs": runs,
              "baselines": {"unigram": base["unigram"], "bigram": base["bigram"],
                            "bigram_beta": base["beta"]},
              "best": best, "samples": samples, "wall_time": time.perf_counter() - t0}
    (out / "lm_table.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "lm_table.md").write_text(md)
    if args.save_best:
        save(best_model, out / "best", best_model.metadata)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`bilens decompose`: each bilinear layer's eigenfeatures for a target (docs/spec.md §10).

    bilens decompose runs/digits --target class:3 --target diff:3,5 --out out/decomp-digits

writes `OUTDIR/decomposition.safetensors` and `decomposition.json` (docs/spec.md §10), with the
faithfulness measured on `--n` inputs of the checkpoint's dataset, and PNG figures
(spectrum, eigenvectors as images, faithfulness curves), all at once (a temporary
directory renamed into place); an existing output is replaced only with `--force`.

A transformer checkpoint (docs/spec.md §9) takes token targets (`class:C` with C a token id,
`token:STR`, `diff:C1,C2`), measures faithfulness on `--n` held-out sequences of
`--dataset synthetic-lm|text|FILE` (every position an input), and also writes `tokens.md`,
the tokens each top eigenvector aligns with (in decomposition.json as well).
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import argparse
import time
from typing import Any

from bilens.cli._common import add_force, add_out, add_seed, count
from bilens.core.errors import BilensError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decompose", help="eigendecompose each layer's interaction matrix for a target",
        description="For each layer and target, fold the norms into the read-out direction w, "
                    "eigendecompose Q = sym(L^T diag(D^T w) R), measure how faithful the top-k "
                    "eigencomponents are on data (frozen and with live norms), and write "
                    "decomposition.safetensors, decomposition.json and PNGs to --out.")
    p.add_argument("checkpoint", metavar="DIR", help="checkpoint directory (bilens train --out)")
    p.add_argument("--target", action="append", default=None, metavar="T",
                   help="class:C | diff:C1,C2 | C | all | token:STR (language models), repeatable "
                        "(default: all classes; a language model needs one)")
    p.add_argument("--layers", default=None, help="layers, e.g. 0,3 (default: all)")
    p.add_argument("--dataset", help="dataset of the faithfulness inputs (default: the "
                                     "checkpoint's)")
    p.add_argument("--split", default="test", help="train | test (default: test)")
    p.add_argument("--n", type=count, default=None,
                   help="faithfulness inputs, at most the split (default: 512; a language "
                        f"model: {LM_ROWS} held-out sequences, every position an input)")
    p.add_argument("--no-faithfulness", action="store_true",
                   help="skip the faithfulness measurement (no inputs are loaded)")
    add_seed(p, "the input subset")
    p.add_argument("--ks", default=None,
                   help="top-k grid, e.g. 1,4,16 (default: 1,2,4,..,d)")
    p.add_argument("--baseline", default="mean",
                   help="reference input of the direct-path share: mean | zero (default: mean)")
    p.add_argument("--stability-n", type=count, default=16,
                   help="inputs on which live-norm eigenvectors are compared (default: 16)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    add_force(p, "an earlier decompose output at --out")
    add_out(p, "output directory", metavar="OUTDIR")
    p.set_defaults(func=run)


LM_ROWS = 64


def _lm_inputs(model: Any, dataset: str, args: argparse.Namespace) -> Any:
    """Held-out token rows `[n, n_ctx]` of `dataset` for a transformer checkpoint."""
    import torch

    from bilens.core.lm_data import load_lm_data

    cfg = model.config
    if args.split != "test":
        raise BilensError(f"--split: a language model's faithfulness is measured on the "
                          f"held-out rows (test), got {args.split!r}")
    data = load_lm_data(dataset, cfg.n_ctx, tokenizer=model.tokenizer,
                        vocab_size=cfg.vocab_size)
    if data.vocab_size > cfg.vocab_size:
        raise BilensError(f"--dataset: {dataset} has {data.vocab_size} token ids but the model "
                          f"has vocab_size {cfg.vocab_size}; pass the dataset it was trained on")
    rows = data.test[:, :cfg.n_ctx]
    n = LM_ROWS if args.n is None else args.n
    if n < rows.shape[0]:
        g = torch.Generator().manual_seed(args.seed)
        rows = rows[torch.randperm(rows.shape[0], generator=g)[:n].sort().values]
    return rows


def _inputs(model: Any, dataset: str, args: argparse.Namespace, sequence: bool) -> Any:
    """The faithfulness inputs of the checkpoint's family."""
    import bilens

    if sequence:
        return _lm_inputs(model, dataset, args)
    n = 512 if args.n is None else args.n
    data = bilens.load_dataset(dataset, args.split)          # --n capped at the split
    if n < len(data):
        data = bilens.load_dataset(dataset, args.split, n=n, seed=args.seed)
    if data.d_in != model.config.d_in:
        raise BilensError(f"--dataset: {dataset} inputs have width {data.d_in} but the "
                          f"model expects {model.config.d_in}; pass the dataset it was trained on")
    return data.x


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise BilensError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _targets(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return None if values == ["all"] else values


def run(args: argparse.Namespace) -> int:
    from bilens.analysis.decompose import check_output, resolve_layers, resolve_targets

    if args.baseline not in ("mean", "zero"):
        raise BilensError(f"--baseline: expected mean or zero, got {args.baseline!r}")
    layers, ks = _ints(args.layers, "--layers"), _ints(args.ks, "--ks")
    check_output(args.out, args.force)

    import bilens
    from bilens.analysis.decompose import decompose
    from bilens.analysis.eigen_faithfulness import check_ks
    from bilens.core.io import atomic_dir

    model = bilens.load(args.checkpoint)
    cfg = model.config
    sequence = isinstance(model, bilens.BilinearTransformer)
    target = _targets(args.target)
    if sequence and target is None and args.target:
        target = "all"
    resolve_targets(target, cfg.vocab_size if sequence else cfg.n_out,   # every bad input
                    getattr(model, "tokenizer", None), sequence)           # fails before work
    resolve_layers(layers, cfg.n_layers)
    check_ks(ks, cfg.d_model)
    dataset = args.dataset or getattr(model, "metadata", {}).get("dataset")
    x = None
    if not args.no_faithfulness and dataset is None:
        print("no dataset recorded in the checkpoint (pass --dataset): faithfulness skipped")
    elif not args.no_faithfulness:
        x = _inputs(model, dataset, args, sequence)
    start = time.perf_counter()
    dec = decompose(model, target=target, layers=layers, inputs=x, ks=ks,
                    baseline=args.baseline, stability_n=args.stability_n)
    seconds = time.perf_counter() - start
    if dec.faithfulness is not None:
        dec.faithfulness.update(dataset=dataset, split=args.split, seed=args.seed)
    with atomic_dir(args.out) as tmp:
        dec.write(tmp)
        if dec.tokens is not None:
            from bilens.report.decomposition import token_table

            (tmp / "tokens.md").write_text(token_table(dec.tokens) + "\n")
        if not args.no_plots:
            from bilens.report.decomposition import write_figures

            write_figures(dec, tmp, model=model, dataset=dataset)
    print(table(dec))
    if dec.tokens is not None:
        from bilens.report.decomposition import token_table

        print("\n" + token_table(dec.tokens, vectors=2))
    print(f"\nwrote {args.out}/ (decomposition.safetensors, decomposition.json"
          f"{', tokens.md' if dec.tokens is not None else ''}"
          f"{'' if args.no_plots else ', PNGs'}); decomposed in {seconds:.2f} s")
    return 0


def table(dec: Any) -> str:
    """A short text summary: per layer the top eigenvalues and the faithfulness at k=1,4,16."""
    faith = dec.faithfulness or {}
    lines = []
    for l in dec.layers:
        lam = dec.eigenvalues[l]
        top = ", ".join(f"{v:.3g}" for v in lam[:, :3].abs().mean(0).tolist())
        line = f"layer {l}: top-3 |eigenvalues| (mean over {len(dec.targets)} targets) [{top}]"
        layer = faith.get("layers", {}).get(str(l))
        if layer:
            ks = faith["ks"]
            missed = ", ".join(f"k={k} {100 * layer['recon_ne_mean'][ks.index(k)]:.1f}%"
                               for k in (1, 4, 16) if k in ks)
            line += f"; missed by top-k: {missed}; direct share {layer['direct_share_mean']:.2f}"
        lines.append(line)
    last = faith.get("last_layer")
    if last:
        ks = faith["ks"]
        for k in (1, 4, 16):
            if k in ks:
                i = ks.index(k)
                lines.append(f"last layer, rank-{k} truncation: error frozen "
                             f"{100 * last['frozen_ne_mean'][i]:.1f}%, live "
                             f"{100 * last['live_ne_mean'][i]:.1f}%, gap "
                             f"{100 * last['gap_ne_mean'][i]:.1f}%")
        stab = last["stability"]
        lines.append("eigenspace overlap frozen vs live: " + ", ".join(
            f"k={k} {v:.3f}" for k, v in zip(stab["ks"], stab["overlap_mean"], strict=True)))
    return "\n".join(lines)

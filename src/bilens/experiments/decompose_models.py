"""The weight-based decomposition (docs/decomposition.md) of every model a comparison
trained, as plain data for the claims and the report.

For each row of `CompareResult.to_dict()["rows"]` (its checkpoint is in the compare cache,
`row["model_dir"]`), `decompose_compared` decomposes every layer for every class, measures
faithfulness on the first `n` test inputs (`bilens.analysis.eigen_faithfulness`), and
returns

    {"settings": {...}, "records": [{"dataset", "norm", "position", "seed", "faithfulness"}],
     "sections": [{"norm", "position", "seed", "summary", "spectrum", "images"}]}

`records` (per-target lists dropped where their mean is kept, `slim`) feed claim 11
(`bilens.experiments.decomposition.claim_features_intact`);
`sections` hold, for the first seed of each configuration (no norm once: one network in
both positions), what the report draws: the summary (`Decomposition.summary()`), every
layer's eigenvalues per target, and layer `IMAGE_LAYER`'s top eigenvectors projected to
input space through the embedding (image datasets).

Example:
    >>> out = decompose_compared(cmp.to_dict(), runner.dataset)       # doctest: +SKIP
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

N_INPUTS = 128           # faithfulness inputs per model
STABILITY_N = 16         # inputs whose live-norm eigenvectors are compared (one eigh each)
KS = (1, 2, 4, 8, 16, 32, 64)
IMAGE_LAYER = 0          # its input is the embedding's: the eigenvectors are pixel features
IMAGE_SHAPES = {"digits": (8, 8), "mnist": (28, 28), "fashion-mnist": (28, 28)}
PER_SIGN = 2             # eigenvectors drawn per sign (largest positive, largest negative)
DIGITS = 4               # significant digits kept in the JSON


def _round(values: Any) -> Any:
    if isinstance(values, list):
        return [_round(v) for v in values]
    return float(f"{values:.{DIGITS}g}")


def slim(faith: Any) -> Any:
    """The faithfulness dict without the per-target lists that have a `<name>_mean` beside
    them (the means are what the claim and the report read; the JSON stays small)."""
    if not isinstance(faith, dict):
        return faith
    return {k: slim(v) for k, v in faith.items() if f"{k}_mean" not in faith}


def _images(dec: Any, model: Any, dataset: str, l: int) -> dict[str, Any] | None:
    """Layer `l`'s top `PER_SIGN` positive and negative eigenvectors per target, projected
    to input space (`E^T v`, every norm before `u` folded in), as images."""
    from bilens.analysis.direct_path import direct_path

    shape = IMAGE_SHAPES.get(dataset)
    if shape is None or shape[0] * shape[1] != model.config.d_in or l not in dec.layers:
        return None
    M = direct_path(model).input_map(l).double().cpu()                     # [d_model, d_in]
    targets = []
    for t, name in enumerate(dec.targets):
        lam, V = dec.eigenvalues[l][t].cpu(), dec.eigenvectors[l][t].cpu()
        cols = ([i for i in range(lam.shape[0]) if lam[i] > 0][:PER_SIGN]
                + [i for i in range(lam.shape[0]) if lam[i] < 0][:PER_SIGN])
        targets.append({"target": name, "eigenvalues": _round([lam[i].item() for i in cols]),
                        "images": [_round((M.T @ V[:, i]).tolist()) for i in cols]})
    return {"layer": l, "shape": list(shape), "targets": targets}


def section(dec: Any, model: Any, dataset: str, row: dict[str, Any]) -> dict[str, Any]:
    """What the report draws for one configuration (the module docstring)."""
    summary = dec.summary()
    summary["targets"] = [{"spec": t["spec"]} for t in summary["targets"]]
    summary["faithfulness"] = slim(summary["faithfulness"])
    return {"norm": row["norm"], "position": row["position"], "seed": row["seed"],
            "summary": summary,
            "spectrum": {str(l): _round(dec.eigenvalues[l].tolist()) for l in dec.layers},
            "images": _images(dec, model, dataset, IMAGE_LAYER)}


def decompose_compared(cmp: dict[str, Any], dataset_of: Callable[[str, str], Any], *,
                       n: int = N_INPUTS, stability_n: int = STABILITY_N,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Decompose every model of a comparison (module docstring).

    Args:
        cmp: `CompareResult.to_dict()`; its rows' `model_dir` checkpoints are loaded.
        dataset_of: `(name, split) -> Dataset` (e.g. `Runner.dataset`).
        n: test inputs of the faithfulness measurement.
        stability_n: inputs of the live-norm eigenvector comparison.
        log: progress lines (None: silent).

    Returns:
        `{"settings", "records", "sections"}` (JSON-ready).
    """
    from bilens.analysis.decompose import decompose
    from bilens.core.checkpoint import load

    start = time.perf_counter()
    x = dataset_of(cmp["dataset"], "test").x[:n]
    records, sections, seen = [], [], set()
    for row in sorted(cmp["rows"], key=lambda r: r["seed"]):
        model = load(row["model_dir"]).double()
        ks = [k for k in KS if k < model.config.d_model] + [model.config.d_model]
        dec = decompose(model, inputs=x, ks=ks, stability_n=stability_n)
        records.append({"dataset": cmp["dataset"], "norm": row["norm"],
                        "position": row["position"], "seed": row["seed"],
                        "faithfulness": slim(dec.faithfulness)})
        key = (row["norm"], "any" if row["norm"] == "none" else row["position"])
        if key not in seen:
            seen.add(key)
            sections.append(section(dec, model, cmp["dataset"], row))
        if log:
            log(f"decomposed {row['norm']}/{row['position']} seed {row['seed']}")
    settings = {"dataset": cmp["dataset"], "n_inputs": int(x.shape[0]), "ks": ks,
                "stability_n": stability_n, "targets": "every class",
                "image_layer": IMAGE_LAYER, "seconds": time.perf_counter() - start}
    return {"settings": settings, "records": records, "sections": sections}


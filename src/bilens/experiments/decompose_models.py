"""The weight-based decomposition (docs/decomposition.md) of every model a comparison
trained, as plain data for the claims and the report.

For each row of `CompareResult.to_dict()["rows"]` (its checkpoint is in the compare cache,
`row["model_dir"]`), `decompose_compared` decomposes every layer, measures faithfulness
on held-out data (`bilens.analysis.eigen_faithfulness`), and returns

    {"settings": {...}, "records": [{"dataset", "kind", "norm", "position", "seed",
                                     "d_model", "faithfulness"}],
     "sections": [{"kind", "norm", "position", "seed", "summary", "spectrum", "images",
                   "tokens"}]}

- an MLP comparison: every class, the first `n` test inputs (default `N_INPUTS`);
- a transformer comparison (`settings["kind"] == "transformer"`, `bilens compare --kind
  transformer`): the `N_TARGETS` most frequent next tokens of the first `n` held-out
  sequences (default `N_SEQUENCES`) as `class:C` targets, the same for every model, and
  faithfulness on those sequences, every position one input
  (`bilens.analysis.lm_decompose`).

`records` (per-target lists dropped where their mean is kept, `slim`) feed claim 11
(`bilens.experiments.decomposition.claim_features_intact`);
`sections` hold, for the first seed of each configuration (no norm once: one network in
both positions), what the report draws: the summary (`Decomposition.summary()`), every
layer's eigenvalues per target, and either layer `IMAGE_LAYER`'s top eigenvectors
projected to input space through the embedding (image datasets, `images`) or, for a
language model, the tokens each layer's top `TOKEN_VECTORS` eigenvectors align with
(`tokens`, `bilens.analysis.lm_decompose.token_alignment`).

Example:
    >>> out = decompose_compared(cmp.to_dict(), runner.dataset)       # doctest: +SKIP
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

N_INPUTS = 128           # faithfulness inputs per model (MLP)
N_SEQUENCES = 32         # held-out sequences per language model, every position an input
N_TARGETS = 4            # language models: the most frequent next tokens, as class:C
TOKEN_VECTORS = 2        # language models: top eigenvectors per layer and target in sections
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


def _rounded(ends: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "score": _round(e["score"])} for e in ends]


def _tokens(tokens: dict[str, Any] | None) -> dict[str, Any] | None:
    """`token_alignment`'s dict cut to the top `TOKEN_VECTORS` eigenvectors, scores rounded."""
    if tokens is None:
        return None
    return {**tokens, "layers": {
        l: [{**r, "eigenvalue": _round(r["eigenvalue"]), "positive": _rounded(r["positive"]),
             "negative": _rounded(r["negative"])} for r in rows if r["rank"] < TOKEN_VECTORS]
        for l, rows in tokens["layers"].items()}}


def section(dec: Any, model: Any, dataset: str, row: dict[str, Any]) -> dict[str, Any]:
    """What the report draws for one configuration (the module docstring)."""
    summary = dec.summary()
    summary.pop("tokens", None)                          # kept, cut, under "tokens"
    summary["targets"] = [{"spec": t["spec"]} for t in summary["targets"]]
    summary["faithfulness"] = slim(summary["faithfulness"])
    return {"kind": _kind(model), "norm": row["norm"], "position": row["position"],
            "seed": row["seed"], "summary": summary,
            "spectrum": {str(l): _round(dec.eigenvalues[l].tolist()) for l in dec.layers},
            "images": None if dec.tokens is not None else _images(dec, model, dataset,
                                                                   IMAGE_LAYER),
            "tokens": _tokens(dec.tokens)}


def _kind(model: Any) -> str:
    return getattr(model.config, "kind", "mlp")          # TransformerConfig.kind


def ks_for(d_model: int) -> list[int]:
    """The top-k grid of every comparison model: `KS` below `d_model`, then `d_model`."""
    return [k for k in KS if k < d_model] + [d_model]


def frequent_next_tokens(rows: Tensor, n_targets: int = N_TARGETS) -> list[str]:
    """The `n_targets` tokens that most often come next in held-out rows `[N, T+1]` (ties by
    the lower id), as `class:C` targets: the fixed read-outs nearest the comparison's
    input-dependent `next` target (`c . logits` for the token that comes next)."""
    import torch

    counts = torch.bincount(rows[:, 1:].reshape(-1).long())
    order = torch.sort(counts, descending=True, stable=True).indices
    return [f"class:{int(c)}" for c in order[:n_targets] if counts[c] > 0]


def _each_model(cmp: dict[str, Any], dataset: str, decompose_one: Callable[[Any], Any],
                device: str, log: Callable[[str], None] | None) -> tuple[list, list]:
    """Decompose every row's checkpoint: `(records, sections)` (module docstring)."""
    import torch

    from bilens.core.checkpoint import load

    records, sections, seen = [], [], set()
    for row in sorted(cmp["rows"], key=lambda r: r["seed"]):
        model = load(row["model_dir"], device=device, dtype=torch.float64)
        dec = decompose_one(model)
        records.append({"dataset": dataset, "kind": _kind(model), "norm": row["norm"],
                        "position": row["position"], "seed": row["seed"],
                        "d_model": model.config.d_model, "faithfulness": slim(dec.faithfulness)})
        key = (row["norm"], "any" if row["norm"] == "none" else row["position"])
        if key not in seen:
            seen.add(key)
            sections.append(section(dec, model, dataset, row))
        if log:
            log(f"decomposed {row['norm']}/{row['position']} seed {row['seed']}")
    return records, sections


def decompose_compared(cmp: dict[str, Any], dataset_of: Callable[[str, str], Any], *,
                       n: int | None = None, stability_n: int = STABILITY_N,
                       target: Any = None, device: str = "cpu",
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Decompose every model of a comparison, MLP or transformer (module docstring).

    Args:
        cmp: `CompareResult.to_dict()` of `compare` or `compare_lm`; its rows' `model_dir`
            checkpoints are loaded.
        dataset_of: `(name, split) -> Dataset` (`Runner.dataset`), or for a transformer
            comparison `-> TokenData` (`LMRunner.dataset`).
        n: test inputs (MLP, default `N_INPUTS`) or held-out sequences (transformer,
            default `N_SEQUENCES`) of the faithfulness measurement.
        stability_n: inputs (positions) of the live-norm eigenvector comparison.
        target: what to decompose (any `bilens.decompose` target); None: every class (MLP),
            the `N_TARGETS` most frequent next tokens (transformer, `frequent_next_tokens`).
        device: where the float64 models run (`"cpu"`; `"cuda"` for the text models).
        log: progress lines (None: silent).

    Returns:
        `{"settings", "records", "sections"}` (JSON-ready).

    Example:
        >>> dec = decompose_compared(compare_lm("synthetic-lm").to_dict(),
        ...                          runner.dataset)                # doctest: +SKIP
        >>> claim_features_intact(dec["records"], "synthetic-lm")   # doctest: +SKIP
    """
    from bilens.analysis.decompose import decompose

    start = time.perf_counter()
    x, target, settings = _inputs(cmp, dataset_of(cmp["dataset"], "test"), n, target)
    records, sections = _each_model(cmp, cmp["dataset"], lambda model: decompose(
        model, target=target, inputs=x, ks=ks_for(model.config.d_model),
        stability_n=stability_n), device, log)
    settings.update(ks=ks_for(records[-1]["d_model"]) if records else list(KS),
                    stability_n=stability_n, seconds=time.perf_counter() - start)
    return {"settings": settings, "records": records, "sections": sections}


def _inputs(cmp: dict[str, Any], data: Any, n: int | None,
            target: Any) -> tuple[Tensor, Any, dict[str, Any]]:
    """The faithfulness inputs, the target and the settings that say what they are."""
    settings: dict[str, Any] = {"dataset": cmp["dataset"]}
    if (cmp.get("settings") or {}).get("kind") != "transformer":
        x = data.x[: n or N_INPUTS]
        return x, target, {**settings, "kind": "mlp", "n_inputs": int(x.shape[0]),
                           "targets": "every class" if target is None else _spec(target),
                           "image_layer": IMAGE_LAYER}
    rows = data.test[: n or N_SEQUENCES]                               # [N, T+1]
    rule = "given"
    if target is None:
        target = frequent_next_tokens(rows)
        rule = f"the {N_TARGETS} most frequent next tokens of the held-out sequences"
    return rows[:, :-1], target, {
        **settings, "kind": "transformer", "n_sequences": int(rows.shape[0]),
        "seq_len": int(rows.shape[1] - 1), "n_inputs": int(rows[:, :-1].numel()),
        "targets": _spec(target), "target_rule": rule, "token_vectors": TOKEN_VECTORS}


def _spec(target: Any) -> Any:
    """A target as JSON: specs kept, a tensor named."""
    items = target if isinstance(target, (list, tuple)) else [target]
    return [t if isinstance(t, (str, int)) else "direction" for t in items]

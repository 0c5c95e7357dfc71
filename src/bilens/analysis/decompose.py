"""Weight-based decomposition of bilinear layers (docs/spec.md §10; Pearce, Dooms et al., "Bilinear
MLPs enable weight-based mechanistic interpretability").

Layer `l`'s contribution to a read-out direction `w` of the residual is a quadratic form of
its input, `w . D z = u^T Q u` with `Q = sym(L^T diag(D^T w) R)`, and the eigenvectors of
`Q` are the layer's features for `w`. For a target `c . logits`, `w` is `c` pulled back
along the direct path with every norm folded in and every statistic set to 1
(`bilens.analysis.direct_path`); an input's own statistics multiply the form by one
scalar, its statistic factor, so `Q` and its eigenvectors do not depend on the input.

    >>> from bilens import BilinearNet, ModelConfig
    >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
    >>> dec = decompose(model, target="class:2")
    >>> dec.eigenvalues[0].shape                                  # [n_targets, d_model]
    torch.Size([1, 16])

Everything is computed in float64. `decompose(..., inputs=x)` also measures how faithful
the decomposition is on data (`bilens.analysis.eigen_faithfulness`).
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.analysis.direct_path import DirectPath, direct_path
from bilens.analysis.interaction import interaction_matrix, sorted_eigh
from bilens.core.errors import BilensError
from bilens.core.io import atomic_dir, dump_json

FORMAT_VERSION = 1
TENSOR_FILE = "decomposition.safetensors"
SUMMARY_FILE = "decomposition.json"
INPUT_DEPENDENT = ("predicted", "margin", "label", "logprob", "next", "mean-logprob")
DecomposeTarget = str | int | Tensor | Sequence[str | int | Tensor] | None


@dataclass
class Decomposition:
    """Per layer and target: the read-out `w`, `Q(w)` and its eigendecomposition.

    Dicts are keyed by layer index; every tensor's first axis is the target.
    Eigenvalues are sorted by `|lambda|`, descending; eigenvector column `i` pairs with
    eigenvalue `i`; both are in the coordinates of the layer's input `u`.
    """

    layers: list[int]
    targets: list[str]
    target_directions: Float[Tensor, "target n_out"]
    direction: dict[int, Float[Tensor, "target d_model"]]
    interaction: dict[int, Float[Tensor, "target d_model d_model"]]
    eigenvalues: dict[int, Float[Tensor, "target d_model"]]
    eigenvectors: dict[int, Float[Tensor, "target d_model d_model"]]
    config: dict[str, Any] = field(default_factory=dict)
    faithfulness: dict[str, Any] | None = None
    tokens: dict[str, Any] | None = None       # language models: the tokens each v aligns with

    def contribution(self, l: int, u: Float[Tensor, "batch d_model"],
                     k: int | None = None) -> Float[Tensor, "target batch"]:
        """`sum_{i<k} lambda_i (v_i . u)^2` per target and input (statistics 1; all `i`
        when `k` is None, which is `u^T Q u`)."""
        lam, V = self.eigenvalues[l], self.eigenvectors[l]
        k = lam.shape[1] if k is None else k
        proj = torch.einsum("nd,tdk->tnk", u.to(V.dtype), V[:, :, :k])
        return (proj.square() * lam[:, None, :k]).sum(-1)

    def to_tensors(self) -> dict[str, Tensor]:
        """docs/spec.md §10's tensors: `direction.{l}`, `eigenvalues.{l}`, `eigenvectors.{l}`."""
        out: dict[str, Tensor] = {}
        for l in self.layers:
            out[f"direction.{l}"] = self.direction[l]
            out[f"eigenvalues.{l}"] = self.eigenvalues[l]
            out[f"eigenvectors.{l}"] = self.eigenvectors[l]
        return out

    def summary(self) -> dict[str, Any]:
        """The JSON beside the tensors: targets, layers, model config, faithfulness."""
        return {"format": "bilens.decomposition", "version": FORMAT_VERSION,
                "layers": list(self.layers),
                "targets": [{"spec": s, "direction": d.tolist()}
                            for s, d in zip(self.targets, self.target_directions, strict=True)],
                "coordinates": "u, the input of each bilinear layer (docs/spec.md §10)",
                "sorted_by": "|eigenvalue|, descending",
                "model": self.config, "faithfulness": self.faithfulness,
                **({} if self.tokens is None else {"tokens": self.tokens})}

    def write(self, directory: str | os.PathLike) -> list[Path]:
        """Write the two files into an existing `directory` (no overwrite check)."""
        from safetensors.torch import save_file

        root = Path(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.to_tensors().items()}
        save_file(tensors, str(root / TENSOR_FILE),
                  metadata={"format": "bilens.decomposition", "version": str(FORMAT_VERSION)})
        with open(root / SUMMARY_FILE, "w") as f:
            dump_json(self.summary(), f)
        return [root / TENSOR_FILE, root / SUMMARY_FILE]

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write `decomposition.safetensors` and `decomposition.json` to `directory`,
        atomically; an existing output is replaced only with `overwrite=True`."""
        check_output(directory, overwrite)
        with atomic_dir(directory) as tmp:
            self.write(tmp)
        return Path(directory)


def check_output(directory: str | os.PathLike, overwrite: bool) -> None:
    """Raise unless `directory` may be written: absent or empty, or (with `overwrite`) an
    earlier decomposition output."""
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise BilensError(f"out: {str(root)!r} is a file; choose a directory")
    if not root.is_dir() or not any(root.iterdir()):
        return
    if not (root / SUMMARY_FILE).is_file():
        raise BilensError(f"out: {str(root)!r} exists and is not a bilens decompose output; "
                          f"choose a new directory (it would be replaced)")
    if not overwrite:
        raise BilensError(f"out: {str(root)!r} exists; pass --force to replace it "
                          f"(overwrite=True from Python)")


def load_decomposition(directory: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a written decomposition back: `(tensors, summary)`."""
    from safetensors.torch import load_file

    root = Path(directory)
    if not (root / TENSOR_FILE).is_file():
        raise BilensError(f"decomposition: {root / TENSOR_FILE} not found; run bilens decompose")
    return load_file(str(root / TENSOR_FILE)), json.loads((root / SUMMARY_FILE).read_text())


def resolve_targets(target: DecomposeTarget, n_out: int, tokenizer: Any = None,
                    sequence: bool = False) -> tuple[list[str], Tensor]:
    """Target specs -> `(names, directions [T, n_out])` (float64).

    Accepts `None` or `"all"` (every class), `"class:C"`, an int `C`, `"diff:C1,C2"`, a
    float tensor `[n_out]` (a direction) or `[T, n_out]`, or a list of any of these; for a
    language model (`sequence`) also `"token:STR"` (one token of `tokenizer`), and None is
    refused (every token of the vocabulary is rarely what is meant: pass `"all"`).
    """
    from bilens.analysis.transformer_path import token_id
    from bilens.core.targets import resolve_target

    if target is None and sequence:
        raise BilensError("target: a language model needs a token target: class:C (a token "
                          "id), token:STR, diff:C1,C2, a direction [vocab], or 'all'")
    if target is None or (isinstance(target, str) and target == "all"):
        target = [f"class:{c}" for c in range(n_out)]
    if isinstance(target, Tensor) and target.is_floating_point() and target.ndim == 2:
        target = list(target)
    items = list(target) if isinstance(target, (list, tuple)) else [target]
    if not items:
        raise BilensError("target: the list is empty; pass class:C, diff:C1,C2, a direction "
                          "or 'all'")
    names, rows = [], []
    for item in items:
        if isinstance(item, str) and item.partition(":")[0] in INPUT_DEPENDENT:
            raise BilensError(f"target: {item!r} depends on the input; a decomposition needs a "
                              f"fixed read-out: class:C, diff:C1,C2, a direction [n_out] or "
                              f"'all'")
        if isinstance(item, Tensor) and not item.is_floating_point():
            item = int(item)
        if sequence and isinstance(item, str) and item.startswith("token:"):
            names.append(item)
            rows.append(torch.zeros(n_out, dtype=torch.float64))
            rows[-1][token_id(item, tokenizer, n_out)] = 1.0
            continue
        resolved = resolve_target(item, torch.zeros(1, n_out, dtype=torch.float64))
        names.append(resolved.spec if isinstance(item, (str, int)) else "direction")
        rows.append(resolved.direction[0])
    return names, torch.stack(rows)


def resolve_layers(layers: int | Sequence[int] | None, n_layers: int) -> list[int]:
    """`None` -> every layer; else the given indices, each checked."""
    if layers is None:
        return list(range(n_layers))
    items = [layers] if isinstance(layers, int) else list(layers)
    out: list[int] = []
    for l in items:
        if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n_layers:
            raise BilensError(f"layers: {l!r} is out of range; the model has {n_layers} layers "
                              f"(valid 0..{n_layers - 1})")
        if l not in out:
            out.append(l)
    if not out:
        raise BilensError("layers: the list is empty; pass None for every layer")
    return out


def decompose(
    model: Any,
    *,
    target: DecomposeTarget = None,
    layers: int | Sequence[int] | None = None,
    inputs: Float[Tensor, "batch d_in"] | None = None,
    ks: Sequence[int] | None = None,
    baseline: str | Tensor = "mean",
    stability_n: int = 16,
) -> Decomposition:
    """Each layer's interaction matrix `Q_l(w)` for each target, and its eigendecomposition.

    Args:
        model: a `BilinearNet` (docs/spec.md §1) or a `BilinearTransformer` (docs/spec.md §9).
        target: `"class:C"`, `"diff:C1,C2"`, an int, a direction `[n_out]`, a list of these,
            or None / `"all"` for every class (the default). For a transformer the classes
            are token ids, `"token:STR"` names a token through `model.tokenizer`, and a
            target is required.
        layers: layer indices, or None for all.
        inputs: data on which to measure faithfulness (`decomposition.faithfulness`);
            None skips it. For a transformer: token ids `[N, T]`, every position an input
            (`bilens.analysis.lm_decompose`).
        ks: the top-k grid of the faithfulness measurement (default 1, 2, 4, ..., d_model).
        baseline: reference of the direct-path share: `"mean"` (the inputs' mean), `"zero"`,
            or an input `[d_in]`.
        stability_n: inputs on which the live-norm eigenvectors are compared.

    Returns:
        A `Decomposition` (float64).

    Example:
        >>> from bilens import BilinearNet, ModelConfig
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2,
        ...                                 n_out=6))
        >>> dec = decompose(model, target=["class:3", "diff:3,5"], layers=[0])
        >>> dec.eigenvectors[0].shape          # [2 targets, d_model, d_model]
        torch.Size([2, 16, 16])
    """
    path = direct_path(model)
    sequence = getattr(path, "sequence", False)
    names, c = resolve_targets(target, path.n_out, getattr(model, "tokenizer", None), sequence)
    chosen = resolve_layers(layers, path.n_layers)
    dec = _decompose(path, names, c, chosen)
    dec.config = model.config.to_dict() if hasattr(model, "config") else {}
    if sequence:
        from bilens.analysis.lm_decompose import sequence_faithfulness, token_alignment

        dec.tokens = token_alignment(path, dec)
        if inputs is not None:
            dec.faithfulness = sequence_faithfulness(path, dec, inputs, ks=ks,
                                                     baseline=baseline, stability_n=stability_n)
    elif inputs is not None:
        from bilens.analysis.eigen_faithfulness import faithfulness

        dec.faithfulness = faithfulness(path, dec, inputs, ks=ks, baseline=baseline,
                                        stability_n=stability_n)
    return dec


@torch.no_grad()
def _decompose(path: DirectPath, names: list[str], c: Tensor, layers: list[int]) -> Decomposition:
    direction, inter, lams, vecs = {}, {}, {}, {}
    for l in layers:
        L, R, D = path.weights(l)
        w = path.readout(l, c.to(L.device, L.dtype))                         # [T, d]
        Q = interaction_matrix(L, R, D, w)
        direction[l], inter[l] = w, Q
        lams[l], vecs[l] = sorted_eigh(Q)
    return Decomposition(layers=layers, targets=names, target_directions=c.double(),
                         direction=direction, interaction=inter, eigenvalues=lams,
                         eigenvectors=vecs)

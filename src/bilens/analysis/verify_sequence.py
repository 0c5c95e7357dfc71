"""Verification for the sequence model: every node's prediction against its real ablation.

`verify_sequence` runs, on one batch of token sequences and a target read at `p`:

1. the node attribution in each mode (`predicted.<mode>`, docs/spec.md §9),
2. the exact oracle four times: the real network (`actual`), norms held
   (`actual_frozen_norm`), patterns held (`actual_frozen_attn`), both (`actual_frozen_both`),
3. the docs/spec.md §5 metrics overall, per layer, by the distance `p - t`, per node type (`at_p`,
   the node's own position; `before_p`, reaching the target only through attention),
4. the error split (docs/lm-verification.md), with `a` actual, `a_n`, `a_a`, `a_b` the
   three held variants and `p_f` the `frozen` prediction:

       a - p_f = (a - a_n)          norm drift (patterns live)
               + (a_n - a_b)        attention-pattern change (norms held)
               + (a_b - p_f)        gating interference (everything held: only the
                                    bilinear MLPs are non-linear)

   and, beside it, `a - a_a` (the pattern change with norms live) and the interaction
   `a - a_n - a_a + a_b`; each as `sum|.| / sum|a|`,
5. the faithfulness of the top-k node circuit (the `k` nodes of largest `|predicted|`
   ablated together, against the sum of their predictions),
6. with `features`, every feature (channel `(l, k)` at every position at once) really
   ablated (`feature.actual` `[B, L, H]`) against each mode's first-order prediction, the
   sum of its node predictions over the positions (`feature.predicted.<mode>`):
   `metrics["features"][mode]`, the docs/spec.md §5 metrics overall and per layer.

Metrics count only the nodes that can reach the target (`t <= p`; in the last layer
`t = p`, unless the target reads every position): the others are 0 in every tensor, by
construction. The result is a `VerifyResult` with `metrics["kind"] == "sequence"`.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bilens.ablation import resolve_backend
from bilens.ablation.reference_sequence import joint_sequence_ablation_effect
from bilens.ablation.sequence import (
    ablate_features_prepared,
    ablate_prepared,
    check_layers,
)
from bilens.analysis.circuits import _summary, top_k_mask
from bilens.analysis.metrics import DEFAULT_KS, evaluate, metric_set, pearson, sign_agreement
from bilens.analysis.verify_result import VerifyResult
from bilens.attribution.sequence import SEQUENCE_MODES, attribute_sequence_modes
from bilens.core.errors import BilensError
from bilens.core.memory import DEFAULT_MEMORY
from bilens.core.models.transformer import BilinearTransformer

ACTUALS = {"actual": (False, False), "actual_frozen_norm": (True, False),
           "actual_frozen_attn": (False, True), "actual_frozen_both": (True, True)}
DEFAULT_SEQUENCE_CIRCUIT_KS = (1, 2, 4, 8, 16, 32)


def reachable(position: Tensor, n_layers: int, seq: int, every_position: bool) -> Tensor:
    """`[B, L, T, 1]`: the nodes that can change the target (see the module docstring)."""
    t = torch.arange(seq, device=position.device)
    p = position[:, None, None]                                         # [B, 1, 1]
    last = torch.arange(n_layers, device=position.device)[None, :, None] == n_layers - 1
    ok = (t <= p) if every_position else (t <= p) & (~last | (t == p))
    return ok.expand(-1, n_layers, -1)[..., None]


def verify_sequence(
    model: BilinearTransformer,
    tokens: Tensor,
    *,
    target: object = "predicted",
    position: int | Tensor | None = None,
    baselines: object = "zero",
    modes: Sequence[str] | None = SEQUENCE_MODES,
    labels: Tensor | None = None,
    reference: Tensor | None = None,
    layers: Sequence[int] | None = None,
    circuit_ks: Sequence[int] = DEFAULT_SEQUENCE_CIRCUIT_KS,
    ks: Sequence[int] = DEFAULT_KS,
    features: bool = True,
    memory: str | int = DEFAULT_MEMORY,
    backend: str | None = None,
    precision: str | None = None,
    progress: bool = True,
) -> VerifyResult:
    """Attribute every node in each mode and check it against the exact oracle.

    Args:
        model: the transformer.
        tokens, target, position, baselines, labels, reference: as in
            `bilens.attribution.attribute_sequence`.
        modes: attribution modes (default, or None: all four; `frozen` is always added,
            the error split needs it).
        layers: layers to ablate (default all; the others are NaN in the `actual*` tensors).
        circuit_ks: sizes of the top-k node circuits (empty: skip).
        ks: the `k` of top-k recall.
        features: also ablate every feature (item 6 of the module docstring).
        memory: the working-memory budget.
        backend, precision: how the oracle's large products run (default eager `"fp32"`;
            `bilens.ablation.resolve_backend`); `"triton"` also runs `renorm`'s closed form
            as its Triton kernel (`bilens.attribution.attribute_sequence`).
        progress: progress bars.

    Returns:
        A `VerifyResult` (tensors named as docs/spec.md §9, metrics as described above).

    Example:
        >>> r = verify_sequence(model, tokens, target="next", progress=False)  # doctest: +SKIP
        >>> r.metrics["modes"]["frozen"]["overall"]["pearson"]                 # doctest: +SKIP
    """
    chosen = check_layers(layers, model.config.n_layers)
    backend, precision = resolve_backend(backend, precision, model.device, model.dtype)
    modes = SEQUENCE_MODES if modes is None else tuple(modes)
    if "frozen" not in modes:                        # the split needs the frozen prediction
        modes = (*modes, "frozen")
    renorm = "triton" if backend == "triton" else None     # renorm's closed form as well
    att = attribute_sequence_modes(model, tokens, target=target, position=position,
                                   baselines=baselines, modes=modes, labels=labels,
                                   reference=reference, memory=memory, backend=renorm)
    run, tgt, b = att.run, att.target, att.baselines
    how = dict(layers=chosen, memory=memory, progress=progress, backend=backend,
               precision=precision)
    actual = {name: ablate_prepared(model, run, tgt, b, frozen_norm=fn, frozen_attn=fa, **how)
              for name, (fn, fa) in ACTUALS.items()}
    B, L, T, H = run.z.shape
    ok = reachable(tgt.position, L, T, tgt.every_position) & torch.isfinite(actual["actual"])
    tensors = {"tokens": att.tokens, **tgt.to_tensors(), "activation": run.z,
               **{f"predicted.{m}": p for m, p in att.predicted.items()}, **actual}
    info = {**_info(model, att, ok, baselines), "backend": backend, "precision": precision}
    metrics: dict[str, Any] = {"kind": "sequence", "info": info, "modes": {}}
    nan = torch.tensor(math.nan, dtype=run.z.dtype, device=run.z.device)
    a = torch.where(ok, actual["actual"], nan)
    for mode, p in att.predicted.items():
        m = _mode_metrics(torch.where(ok, p, nan), a, tgt.position, ks)
        if circuit_ks:
            curve = _circuit(model, att, p, ok, actual["actual"], circuit_ks)
            m["circuit"] = curve["summary"]
            for name in ("sum_predicted", "joint", "sum_actual"):
                tensors[f"circuit.{mode}.{name}"] = curve[name]
        metrics["modes"][mode] = m
    metrics["split"] = error_split(att.predicted["frozen"], actual, ok)
    if features:
        feat = ablate_features_prepared(model, run, tgt, b, frozen_norm=False,
                                        frozen_attn=False, **how)
        tensors["feature.actual"] = feat
        metrics["features"] = {}
        for mode, p in att.predicted.items():
            pf = tensors[f"feature.predicted.{mode}"] = p.sum(2)               # [B, L, H]
            metrics["features"][mode] = evaluate(pf, feat, ks)
    return VerifyResult({k: v.detach() for k, v in tensors.items()}, metrics)


def _mode_metrics(p: Tensor, a: Tensor, position: Tensor, ks: Sequence[int]) -> dict[str, Any]:
    """docs/spec.md §5 overall, per layer, per input; by distance `p - t`; per node type."""
    m = evaluate(p, a, ks)
    B, L, T, H = p.shape
    dist = (position[:, None] - torch.arange(T, device=p.device)[None, :])  # [B, T]
    dist = dist[:, None, :, None].expand_as(p)
    m["by_distance"] = []
    for d in range(T):
        sel = dist == d
        if not (sel & torch.isfinite(a)).any():
            continue
        nan = torch.full_like(p, math.nan)
        m["by_distance"].append({"distance": d, **metric_set(torch.where(sel, p, nan),
                                                             torch.where(sel, a, nan), ks)})
    m["node_types"] = {}
    for name, sel in (("at_p", dist == 0), ("before_p", dist > 0)):
        pp, aa = p[sel], a[sel]
        m["node_types"][name] = {"n": int((torch.isfinite(pp) & torch.isfinite(aa)).sum()),
                                 "pearson": pearson(pp, aa),
                                 "sign_error_share": 1 - sign_agreement(pp, aa)}
    return m


def _ne(x: Tensor, scale: float) -> float:
    return x.abs().sum().item() / scale if scale > 0 else math.nan


def error_split(p_frozen: Tensor, actual: dict[str, Tensor], ok: Tensor) -> dict[str, Any]:
    """The split of the module docstring, overall and per layer (each `sum|.| / sum|a|`)."""

    def shares(sel: Tensor) -> dict[str, float]:
        a, an, aa, ab = (actual[k][sel].double() for k in ACTUALS)
        pf = p_frozen[sel].double()
        scale = a.abs().sum().item()
        return {"frozen_ne": _ne(a - pf, scale), "norm_drift": _ne(a - an, scale),
                "attention_change": _ne(an - ab, scale), "gating": _ne(ab - pf, scale),
                "attention_change_norms_live": _ne(a - aa, scale),
                "interaction": _ne(a - an - aa + ab, scale)}

    L = ok.shape[1]
    layer = torch.arange(L, device=ok.device)[None, :, None, None]
    sel = ok.expand_as(p_frozen)
    return {"overall": shares(sel), "per_layer": [shares(sel & (layer == l)) for l in range(L)]}


@torch.no_grad()
def _circuit(model: BilinearTransformer, att: Any, p: Tensor, ok: Tensor, actual: Tensor,
             circuit_ks: Sequence[int]) -> dict[str, Any]:
    """The top-k node circuits by `|p|` among the reachable nodes, ablated together."""
    cand = ok.expand_as(p)
    available = int(cand.flatten(1).sum(1).min())
    ks = sorted({min(int(k), available) for k in circuit_ks if int(k) >= 1} - {0})
    sum_p, joint, sum_a = [], [], []
    for k in ks:
        mask = top_k_mask(p, k, cand)
        zero = torch.zeros_like(p)
        sum_p.append(torch.where(mask, p, zero).sum((1, 2, 3)))
        sum_a.append(torch.where(mask, actual, zero).sum((1, 2, 3)))
        joint.append(joint_sequence_ablation_effect(model, att.tokens, att.run, att.target,
                                                    att.baselines, mask))
    if not ks:
        raise BilensError("circuit_ks: no node can reach the target; nothing to ablate")
    sp, jt, sa = torch.stack(sum_p), torch.stack(joint), torch.stack(sum_a)
    summary = [{"k": k, **_summary(sp[i], jt[i], sa[i])} for i, k in enumerate(ks)]
    return {"ks": ks, "sum_predicted": sp, "joint": jt, "sum_actual": sa, "summary": summary}


def _info(model: BilinearTransformer, att: Any, ok: Tensor, baselines: object) -> dict[str, Any]:
    B, T = att.tokens.shape
    return {"n_inputs": B, "seq_len": T, "target": att.target.spec or "custom",
            "baseline": baselines if isinstance(baselines, str) or baselines is None
            else "tensor",
            "modes": list(att.predicted), "n_ablated": int(ok.expand_as(att.run.z).sum()),
            "model": model.config.to_dict(), "dtype": str(model.dtype).replace("torch.", ""),
            "kind": "transformer"}

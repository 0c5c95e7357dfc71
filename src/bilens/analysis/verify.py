"""Verification: every channel's predicted effect against its real ablation (docs/spec.md §3, §5).

`verify` runs, on one batch of inputs:

1. the attribution in each mode (`predicted.<mode>`),
2. the ground truth in the real network (`actual`) and with every norm frozen at its
   clean statistics (`actual_frozen_norm`), so the error splits into norm drift
   (`actual - actual_frozen_norm`) and gating interference (`actual_frozen_norm - predicted`),
3. the norm drift `ds/s` at the ablated layer against the seed's formula,
4. the faithfulness curve (top-k channels by `|predicted|` ablated together),

and returns a `VerifyResult`: the tensors (docs/spec.md §7 names) and the metrics as a dict, with
an atomic `save` of the data files. Its table, summary.md and plots are rendered by
`bilens.report` (`verify_table`, `plot_verify`, `save_verify`).

Example:
    >>> from bilens import report
    >>> result = bilens.verify(model, x, modes=("frozen", "live"))   # doctest: +SKIP
    >>> print(report.verify_table(result))                           # doctest: +SKIP
    >>> report.save_verify(result, "out/verify")                     # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from bilens.ablation import ablation_effects, ablation_split, channel_mask, resolve_backend
from bilens.analysis.circuits import DEFAULT_CIRCUIT_KS, faithfulness_curve
from bilens.analysis.drift import Drift, drift_summary, norm_drift
from bilens.analysis.metrics import DEFAULT_KS, error_decomposition, evaluate
from bilens.analysis.verify_result import (
    RESULT_FILES,
    VerifyResult,
    check_replaceable,
    replaceable,
)
from bilens.attribution.predict import MODES, Attribution, attribute_modes
from bilens.core.errors import BilensError
from bilens.core.memory import DEFAULT_MEMORY
from bilens.core.models.mlp import BilinearNet
from bilens.core.types import BaselineSpec, ChannelSpec, TargetSpec

__all__ = ["verify", "VerifyResult", "RESULT_FILES", "replaceable", "check_replaceable"]


def verify(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    *,
    target: TargetSpec = "predicted",
    baselines: BaselineSpec = "zero",
    modes: Sequence[str] = MODES,
    labels: Int[Tensor, " batch"] | None = None,
    reference: Float[Tensor, "ref d_in"] | None = None,
    layers: Sequence[int] | None = None,
    channels: ChannelSpec = None,
    circuit_ks: Sequence[int] = DEFAULT_CIRCUIT_KS,
    ks: Sequence[int] = DEFAULT_KS,
    memory: str | int = DEFAULT_MEMORY,
    backend: str | None = None,
    precision: str | None = None,
    progress: bool = True,
    position: int | Tensor | None = None,
) -> VerifyResult:
    """Attribute every channel in each mode and check it against the real ablation.

    Args:
        model: the network.
        inputs: `[N, d_in]`.
        target: target spec (docs/spec.md, targets), resolved once on the clean run.
        baselines: `"zero"`, `"mean"` (over `reference`) or `z` values.
        modes: attribution modes to check (default all: `"frozen"`, `"live"`, `"renorm"`).
        labels: true classes `[N]` (for `"label"`, `"logprob"`).
        reference: inputs for the `"mean"` baseline.
        layers, channels: which channels to ablate (default all; see
            `bilens.ablation.channel_mask`); the others are NaN in `actual`.
        circuit_ks: circuit sizes of the faithfulness curve (empty: skip it).
        ks: the `k` of top-k recall.
        memory: the working-memory budget of the attribution and the ablation.
        backend, precision: how the ablation runs (see `bilens.ablation_effects`; on an
            H200 `backend="triton", precision="3xfp16"` is the fastest, and agrees with
            float64 to ~1e-6); a CPU always runs eager float32 products.
        progress: progress bars.
        position: a sequence model's target position `p` (see below).

    A `BilinearTransformer` is verified node by node (`analysis.verify_sequence`): `inputs`
    are token ids, `modes` default to its four (`frozen`, `frozen-norm`, `live`, `renorm`),
    and `channels` does not apply.

    Returns:
        a `VerifyResult`; `metrics["info"]` records `world_size` and, under `distributed`,
        how the ablation was split (`bilens.ablation.ablation_split`).

    Under `torchrun` the two exhaustive ablations are split across the ranks and gathered
    to every rank (`ablation_effects`); the attribution, drift, circuits and metrics are
    cheap and computed on every rank, so every rank returns the same result.

    Example:
        >>> from bilens import BilinearNet, ModelConfig
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> r = verify(model, torch.randn(4, 8), progress=False)
        >>> r.metrics["modes"]["frozen"]["overall"]["n"]
        256
    """
    from bilens.core.models.transformer import BilinearTransformer

    if isinstance(model, BilinearTransformer):
        from bilens.analysis.verify_sequence import verify_sequence

        if channels is not None:
            raise BilensError("channels: not used for a sequence model; select with layers=...")
        return verify_sequence(model, inputs, target=target, position=position, ks=ks,
                               baselines=baselines, labels=labels, reference=reference,
                               modes=None if modes is MODES else modes, layers=layers,
                               circuit_ks=circuit_ks, memory=memory, backend=backend,
                               precision=precision, progress=progress)
    if position is not None:
        raise BilensError("position: only a sequence model (BilinearTransformer) reads its "
                          "target at a position; leave position=None")
    cfg = model.config
    resolve_backend(backend, precision, model.device, model.dtype)      # bad names: before work
    if not channel_mask(cfg.n_layers, cfg.d_hidden, layers, channels).any():
        raise BilensError(f"layers/channels: no channel selected to ablate (layers={layers!r}); "
                          f"select at least one, or leave both as None for all")
    was_training = model.training
    model.eval()
    try:
        att = attribute_modes(model, inputs, target=target, baselines=baselines,
                              modes=tuple(modes), labels=labels, reference=reference,
                              memory=memory)
        b = torch.zeros_like(att.run.z) if att.baselines is None else att.baselines
        x = inputs.to(device=model.device, dtype=model.dtype)
        common = dict(target=att.target, baselines=b, labels=labels, layers=layers,
                      channels=channels, memory=memory, progress=progress, backend=backend,
                      precision=precision)
        actual = ablation_effects(model, x, **common)
        actual_fn = ablation_effects(model, x, frozen_norm=True, **common)
        drift = norm_drift(model, run=att.run, baselines=b)
    finally:
        model.train(was_training)
    result = _result(model, x, att, b, actual, actual_fn, drift, baselines, circuit_ks, ks)
    split = ablation_split(model, x.shape[0], layers=layers, channels=channels, memory=memory,
                           backend=backend, precision=precision)
    result.metrics["info"].update(world_size=split["world_size"], distributed=split)
    return result


def _result(model: BilinearNet, x: Tensor, att: Attribution, b: Tensor, actual: Tensor,
            actual_fn: Tensor, drift: Drift, baselines: BaselineSpec,
            circuit_ks: Sequence[int], ks: Sequence[int]) -> VerifyResult:
    """The docs/spec.md §7 tensors and the §5 metrics of one verification."""
    run, tgt = att.run, att.target
    ablated = torch.isfinite(actual)
    nan = torch.full_like(actual, math.nan)
    tensors: dict[str, Tensor] = {"inputs": x, **tgt.to_tensors(), "activation": run.z}
    metrics: dict[str, Any] = {"info": _info(model, x, tgt, baselines, ablated,
                                             list(att.predicted)), "modes": {}}
    for mode, p in att.predicted.items():
        tensors[f"predicted.{mode}"] = p
        m = evaluate(p, actual, ks)
        m["decomposition"] = error_decomposition(p, actual, actual_fn)
        if circuit_ks:
            curve = faithfulness_curve(model, x, p, tgt, b, circuit_ks, actual=actual,
                                       candidates=ablated)
            m["circuit"] = [{"k": k, **s}
                            for k, s in zip(curve["ks"], curve["summary"], strict=True)]
            for name in ("sum_predicted", "joint", "sum_actual"):
                tensors[f"circuit.{mode}.{name}"] = curve[name]
        metrics["modes"][mode] = m
    tensors["actual"] = actual
    tensors["actual_frozen_norm"] = actual_fn
    tensors["drift.measured"] = torch.where(ablated, drift.measured, nan)
    tensors["drift.formula"] = torch.where(ablated, drift.formula, nan)
    metrics["drift"] = drift_summary(drift, actual, actual_fn, model.config.d_model)
    return VerifyResult({k: v.detach() for k, v in tensors.items()}, metrics)


def _info(model: BilinearNet, x: Tensor, tgt: Any, baseline: object, ablated: Tensor,
          modes: Sequence[str]) -> dict[str, Any]:
    cfg = model.config
    return {
        "n_inputs": int(x.shape[0]),
        "target": tgt.spec or "custom",
        "baseline": baseline if isinstance(baseline, str) or baseline is None else "tensor",
        "modes": list(modes),
        "n_ablated": int(ablated.sum()),
        "ablated_per_layer": ablated.any(0).sum(-1).tolist(),
        "model": cfg.to_dict(),
        "dtype": str(model.dtype).replace("torch.", ""),
    }

"""Verification: every channel's predicted effect against its real ablation (SPEC §3, §5).

`verify` runs, on one batch of inputs:

1. the attribution in each mode (`predicted.<mode>`),
2. the ground truth in the real network (`actual`) and with every norm frozen at its
   clean statistics (`actual_frozen_norm`), so the error splits into norm drift
   (`actual - actual_frozen_norm`) and gating interference (`actual_frozen_norm - predicted`),
3. the norm drift `ds/s` at the ablated layer against the seed's formula,
4. the faithfulness curve (top-k channels by `|predicted|` ablated together),

and returns a `VerifyResult` holding the tensors (SPEC §7 names), the metrics as a dict,
a plain-text table, PNG plots and an atomic `save`.

Example:
    >>> import bilens
    >>> model = bilens.BilinearNet(bilens.ModelConfig(d_in=8, d_model=16, d_hidden=32,
    ...                                               n_layers=2, n_out=3))
    >>> result = bilens.verify(model, torch.randn(4, 8), modes=("frozen", "live"),
    ...                        progress=False)
    >>> result.modes, result.tensors["actual"].shape
    (['frozen', 'live'], torch.Size([4, 2, 32]))
    >>> print(result)                                                 # doctest: +ELLIPSIS
    4 inputs, target predicted, baseline zero, 256 (input, channel) pairs ablated, float32
    ...
    frozen all ...
    >>> result.save("out/verify")                                     # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.analysis.circuits import DEFAULT_CIRCUIT_KS, faithfulness_curve
from bilens.analysis.drift import drift_summary, norm_drift
from bilens.analysis.metrics import DEFAULT_KS, error_decomposition, evaluate, format_table
from bilens.core.errors import BilensError
from bilens.core.io import atomic_dir
from bilens.core.models.mlp import BilinearNet

RESULT_FILES = ("results.safetensors", "metrics.json", "summary.md")


@dataclass
class VerifyResult:
    """What `verify` measured.

    Attributes:
        tensors: SPEC §7 names: `inputs [N, d_in]`, `target [N, n_out]` (or `label [N]`),
            `activation`, `predicted.<mode>`, `actual`, `actual_frozen_norm` (all
            `[N, L, H]`, NaN where not ablated), plus `drift.measured`, `drift.formula`
            (`ds/s`, `[N, L, H]`) and `circuit.<mode>.{sum_predicted,joint,sum_actual}` `[K, N]`.
        metrics: `{"info", "modes": {mode: {"overall", "per_layer", "per_input",
            "decomposition", "circuit"}}, "drift"}` (JSON-ready).
    """

    tensors: dict[str, Tensor]
    metrics: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def modes(self) -> list[str]:
        return list(self.metrics["modes"])

    def predicted(self, mode: str) -> Float[Tensor, "batch layer hidden"]:
        return self.tensors[f"predicted.{mode}"]

    def table(self) -> str:
        """The metrics as a plain-text table (overall and per layer, drift, circuits)."""
        return format_table(self.metrics)

    def __str__(self) -> str:
        return self.table()

    def plot(self, outdir: str | os.PathLike) -> list[Path]:
        """Write the PNGs (scatter per mode, error per layer, drift formula, faithfulness)
        into `outdir`; returns their paths."""
        from bilens.report.verify_plots import plot_all

        out = Path(outdir)
        out.mkdir(parents=True, exist_ok=True)
        return plot_all(self, out)

    def save(self, outdir: str | os.PathLike, plots: bool = True) -> Path:
        """Write `results.safetensors`, `metrics.json`, `summary.md` (and the PNGs) into
        `outdir`, atomically: all appear together or, on error or Ctrl-C, none.

        An existing `outdir` is replaced only if it is empty or holds a previous result.
        """
        from bilens.analysis.results import save_results

        out = Path(outdir)
        if not replaceable(out):
            raise BilensError(f"out: {str(out)!r} exists and is not a bilens verify result; "
                              f"choose a new directory (it would be replaced)")
        with atomic_dir(out) as tmp:
            save_results(tmp / "results.safetensors", self.tensors, self.metrics,
                         summary_path=tmp / "metrics.json")
            images = self.plot(tmp) if plots else []
            (tmp / "summary.md").write_text(summary_markdown(
                self.metrics, [p.name for p in images], self.extra.get("command")))
        return out

    @classmethod
    def load(cls, outdir: str | os.PathLike) -> VerifyResult:
        """Read a directory written by `save`."""
        from bilens.analysis.results import load_results

        out = Path(outdir)
        missing = [f for f in RESULT_FILES[:2] if not (out / f).exists()]
        if missing:
            raise BilensError(f"{str(out)!r}: missing {missing}; is it a `bilens verify` output?")
        tensors, metrics = load_results(out / "results.safetensors", out / "metrics.json")
        return cls(tensors, _from_json(metrics))


def replaceable(out: Path) -> bool:
    """True if `save` may write `out`: absent, an empty directory, or a previous result
    (`results.safetensors` and `metrics.json`; a lone `metrics.json` may be another tool's)."""
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    return not any(out.iterdir()) or all((out / f).is_file() for f in RESULT_FILES[:2])


def verify(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    target: object = "predicted",
    modes: Sequence[str] = ("frozen", "live"),
    baseline: str | Tensor | None = "zero",
    labels: Tensor | None = None,
    reference: Tensor | None = None,
    layers: Sequence[int] | None = None,
    channels: Any = None,
    circuit_ks: Sequence[int] = DEFAULT_CIRCUIT_KS,
    ks: Sequence[int] = DEFAULT_KS,
    memory: str | int = "4GiB",
    progress: bool = True,
    precision: str = "fp32",
    compile: bool = False,
) -> VerifyResult:
    """Attribute every channel in each mode and check it against the real ablation.

    Args:
        model: the network.
        inputs: `[N, d_in]`.
        target: target spec (SPEC §2), resolved once on the clean run.
        modes: attribution modes to check (`"frozen"`, `"live"`).
        baseline: `"zero"`, `"mean"` (over `reference`) or `z` values.
        labels: true classes `[N]` (for `"label"`, `"logprob"`).
        reference: inputs for the `"mean"` baseline.
        layers, channels: which channels to ablate (default all; see
            `bilens.ablation.ablate.channel_mask`); the others are NaN in `actual`.
        circuit_ks: circuit sizes of the faithfulness curve (empty: skip it).
        ks: the `k` of top-k recall.
        memory: the ablation's working-memory budget.
        progress: progress bars.
        precision, compile: how the ablation's products run on a GPU (see
            `bilens.ablation_effects`; `"3xfp16", compile=True` is the fastest there, and
            agrees with float64 to ~1e-6); a CPU always uses float32.

    Returns:
        a `VerifyResult`.

    Example:
        >>> from bilens.core.config import ModelConfig
        >>> cfg = ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3)
        >>> r = verify(BilinearNet(cfg), torch.randn(4, 8), progress=False)
        >>> r.metrics["modes"]["frozen"]["overall"]["n"]
        256
    """
    from bilens.ablation._engine.steps import PRECISIONS
    from bilens.ablation.ablate import ablation_effects, channel_mask
    from bilens.attribution.predict import attribute_modes

    cfg = model.config
    if precision not in PRECISIONS:
        raise BilensError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if not channel_mask(cfg.n_layers, cfg.d_hidden, layers, channels).any():
        raise BilensError(f"layers/channels: no channel selected to ablate (layers={layers!r}); "
                          f"select at least one, or leave both as None for all")
    was_training = model.training
    model.eval()
    try:
        att = attribute_modes(model, inputs, target, tuple(modes), baseline, labels, reference)
        run, tgt = att.run, att.target
        b = torch.zeros_like(run.z) if att.baseline is None else att.baseline.expand_as(run.z)
        x = inputs.to(device=model.device, dtype=model.dtype)
        common = dict(labels=labels, layers=layers, channels=channels, memory=memory,
                      progress=progress, precision=precision, compile=compile)
        actual = ablation_effects(model, x, tgt, b, **common)
        actual_fn = ablation_effects(model, x, tgt, b, frozen_norm=True, **common)
        drift = norm_drift(model, run=run, baseline=b)
    finally:
        model.train(was_training)
    ablated = torch.isfinite(actual)
    nan = torch.full_like(actual, math.nan)
    tensors: dict[str, Tensor] = {"inputs": x}
    tensors.update(tgt.to_tensors())                      # target [N, n_out] or label [N]
    tensors["activation"] = run.z
    metrics: dict[str, Any] = {"info": _info(model, x, tgt, baseline, ablated, modes),
                               "modes": {}}
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


def _from_json(obj: Any) -> Any:
    """None -> NaN inside metric dicts (inverse of `_json_ready` for numbers)."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: (v if k == "baseline" else _from_json(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def summary_markdown(metrics: dict[str, Any], images: Sequence[str],
                     command: str | None = None) -> str:
    """A short Markdown report: what was run, the table, the plots."""
    info = metrics.get("info", {})
    cfg = info.get("model", {})
    lines = ["# bilens verify", ""]
    if command:
        lines += ["```", command, "```", ""]
    if cfg:
        lines += [f"Model: {cfg['n_layers']} layers, d_model {cfg['d_model']}, d_hidden "
                  f"{cfg['d_hidden']}, norm {cfg['norm']} ({cfg['norm_position']}).", ""]
    lines += ["```", format_table(metrics), "```", ""]
    lines += [f"![{Path(name).stem}]({name})" for name in images]
    return "\n".join(lines) + "\n"

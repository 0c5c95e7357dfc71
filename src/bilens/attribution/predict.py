"""Every channel's predicted ablation effect from one clean forward and one backward
(docs/spec.md §4).

    predicted(x, l, k) = (b - z_{l,k}) * g_{l,k},    g = d f / d z under the linearization

`mode="frozen"` is the seed's method: every norm's statistic `s` is a constant taken from
the clean run, so RMSNorm is the elementwise scaling `gamma / s` and LayerNorm is centering
plus that scaling. Both are linear, so everything after the last layer's `z` is linear and
the prediction for a last-layer channel is exact against a frozen-norm ablation.
`mode="live"` is the true gradient (statistics differentiated too): the exact first-order
prediction of the real ablation, known elsewhere as attribution patching.
`mode="renorm"` (`bilens.renorm`) is `live` with the first norm the ablation reaches
recomputed exactly for every channel; not a gradient, it is exact for last-layer channels
in the real network.

The backward pass itself lives in `bilens.backward` (`gradients`, written out as the seed's
loop, and `gradients_autograd`); this module validates, batches and applies baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from bilens.attribution.backward import (
    GRADIENT_MODES,
    METHODS,
    MODES,
    check_mode,
    gradients,
    gradients_autograd,
)
from bilens.attribution.renorm import renorm_effects
from bilens.core.baselines import BASELINE_HELP, resolve_baseline
from bilens.core.errors import BilensError, check_inputs
from bilens.core.memory import DEFAULT_MEMORY, parse_memory
from bilens.core.models.fastrun import clean_run
from bilens.core.models.mlp import BilinearNet, Run
from bilens.core.targets import Target, resolve_target
from bilens.core.types import BaselineSpec, TargetSpec

__all__ = ["attribute", "attribute_modes", "Attribution", "gradients", "gradients_autograd",
           "renorm_effects", "run_with_cache", "MODES", "GRADIENT_MODES", "METHODS",
           "DEFAULT_METHOD", "DEFAULT_MODE", "batch_size_for"]

DEFAULT_METHOD = "explicit"     # measured faster than autograd: see docs/attribution.md
DEFAULT_MODE = "renorm"         # the most faithful mode measured (docs/results.md)


def batch_size_for(model: BilinearNet, n: int, memory: str | int = DEFAULT_MEMORY,
                   modes: Sequence[str] = ("live",)) -> int:
    """Inputs per chunk so that one chunk's clean run and backward (and, with `renorm` among
    `modes`, its per-channel closed form) stay under `memory` bytes.

    A fixed small chunk leaves a GPU launch-bound (10,000 MNIST inputs in chunks of 1,024
    took 6.6x a forward pass on the H200); one chunk as large as memory allows does not.
    """
    cfg = model.config
    floats = cfg.n_layers * (2 * cfg.d_model + 6 * cfg.d_hidden) + 3 * cfg.n_norms * cfg.d_model
    if "renorm" in modes:      # renorm's [B, H] temporaries per layer, and its stacked result
        floats += (cfg.n_layers + 8) * cfg.d_hidden
    floats += (len(modes) - 1) * cfg.n_layers * cfg.d_hidden     # each further mode's result
    per_input = floats * torch.finfo(model.dtype).bits // 8
    return max(1, min(n, parse_memory(memory) // per_input))


@dataclass
class Attribution:
    """What `attribute_modes` computed for a batch.

    Attributes:
        predicted: mode -> predicted effect `[B, n_layers, d_hidden]`.
        run: the clean run (activations `z`, norm statistics, logits, ...), or None
            when `keep_run=False`.
        target: the resolved target (direction `[B, n_out]` or label `[B]`).
        baselines: `b`, `[B, n_layers, d_hidden]` (None for the zero baseline).
    """

    predicted: dict[str, Float[Tensor, "batch layer d_hidden"]]
    run: Run | None
    target: Target
    baselines: Float[Tensor, "batch layer d_hidden"] | None = None


def attribute(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    *,
    target: TargetSpec = "predicted",
    baselines: BaselineSpec = "zero",
    mode: str = DEFAULT_MODE,
    labels: Int[Tensor, " batch"] | None = None,
    reference: Float[Tensor, "ref d_in"] | None = None,
    memory: str | int = DEFAULT_MEMORY,
    method: str = DEFAULT_METHOD,
) -> Float[Tensor, "batch layer d_hidden"]:
    """Predict the effect of ablating every channel on the target, for every input.

    Args:
        model: the network.
        inputs: `[B, d_in]`.
        target: what `f` is (docs/spec.md, targets): `"predicted"`, `"label"`, `"logprob"`,
            `"class:C"`, `"diff:C1,C2"`, an int class, an int tensor `[B]`, a float
            direction `[n_out]` or `[B, n_out]`, or a resolved `Target`.
        baselines: the value `b` an ablated channel takes: `"zero"`, `"mean"` (over
            `reference`), or a tensor `[n_layers, d_hidden]` / `[B, n_layers, d_hidden]`.
        mode: `"renorm"` (the default: live, the first norm an ablation reaches recomputed
            exactly), `"live"` (the exact gradient) or `"frozen"` (the seed's linearization,
            every norm statistic held).
        labels: true classes `[B]`, for `"label"` and `"logprob"`.
        reference: inputs `[N, d_in]` whose mean activation is the `"mean"` baseline.
        memory: bound on one internal chunk's intermediates, e.g. `"4GiB"`.
        method: `"explicit"` (the written-out backward) or `"autograd"`; same numbers
            (`"renorm"` always uses the explicit backward).

    Returns:
        `predicted [B, n_layers, d_hidden]`: `(b - z) * g`, the predicted change of `f`
        when channel `(l, k)` is set to `b`. `attribute_modes` also returns the clean run.

    Example:
        >>> from bilens import BilinearNet, ModelConfig
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> attribute(model, torch.randn(5, 8), target="class:1", mode="live").shape
        torch.Size([5, 2, 32])
    """
    check_mode(mode)
    result = attribute_modes(model, inputs, target=target, baselines=baselines, modes=(mode,),
                             labels=labels, reference=reference, memory=memory, method=method,
                             keep_run=False)
    return result.predicted[mode]


def attribute_modes(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    *,
    target: TargetSpec = "predicted",
    baselines: BaselineSpec = "zero",
    modes: Sequence[str] = MODES,
    labels: Int[Tensor, " batch"] | None = None,
    reference: Float[Tensor, "ref d_in"] | None = None,
    memory: str | int = DEFAULT_MEMORY,
    method: str = DEFAULT_METHOD,
    keep_run: bool = True,
) -> Attribution:
    """`attribute` for several modes from one clean forward per chunk.

    Arguments as in `attribute`, with `modes` a sequence of mode names, and `keep_run`:
    keep every chunk's clean `Run` (False saves its memory; `.run` is then None).

    Returns:
        An `Attribution` (predicted per mode, clean run, resolved target, baselines).

    Example:
        >>> from bilens import BilinearNet, ModelConfig
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> out = attribute_modes(model, torch.randn(4, 8), modes=("frozen", "live"))
        >>> out.predicted["frozen"].shape, out.run.z.shape
        (torch.Size([4, 2, 32]), torch.Size([4, 2, 32]))
    """
    modes, full_target, b_full, batch = _validate(model, inputs, target, baselines, modes,
                                                  labels, reference, memory, method)
    per_chunk = isinstance(target, str) and target == "predicted"   # needs the clean logits
    x_all = inputs.to(device=model.device, dtype=model.dtype)
    n = x_all.shape[0]
    parts: list[Attribution] = []
    for start in range(0, n, batch):
        index = slice(start, min(start + batch, n))
        run = clean_run(model, x_all[index])
        tgt = resolve_target("predicted", run.logits) if per_chunk else full_target.select(index)
        b = None if b_full is None else (b_full if b_full.ndim == 2 else b_full[index])
        predicted = {m: _predict(model, x_all[index], run, tgt, b, m, method) for m in modes}
        parts.append(Attribution(predicted, run if keep_run else None, tgt,
                                 None if b is None else b.expand_as(run.z)))
    return _cat(parts)


def _validate(model: BilinearNet, inputs: Tensor, target: TargetSpec, baselines: BaselineSpec,
              modes: Sequence[str], labels: Tensor | None, reference: Tensor | None,
              memory: str | int, method: str
              ) -> tuple[tuple[str, ...], Target, Tensor | None, int]:
    """Check everything before any work; return the modes, the target resolved on the
    whole batch, the baseline tensor (`[L, H]` or `[B, L, H]`, None for zero; "mean" is
    computed here, in one pass over the reference) and the inputs per chunk."""
    cfg = model.config
    if isinstance(modes, str) or not modes:
        raise BilensError(f"modes: expected a non-empty sequence of {list(MODES)}, got {modes!r}")
    modes = tuple(dict.fromkeys(check_mode(m, "modes") for m in modes))
    if method not in METHODS:
        raise BilensError(f"method: expected one of {list(METHODS)}, got {method!r}")
    check_inputs(inputs, cfg.d_in)
    n = inputs.shape[0]
    batch = batch_size_for(model, n, memory, modes)
    if labels is not None:
        labels = torch.as_tensor(labels).to(model.device).long().flatten()
        if labels.shape[0] != n:
            raise BilensError(f"labels: expected {n} labels, one per input, got {labels.shape[0]}")
    dummy = torch.zeros(n, cfg.n_out, dtype=model.dtype, device=model.device)
    full_target = resolve_target(target, dummy, labels)        # raises on a bad spec or size
    b_full = _check_baselines(baselines, n, cfg.n_layers, cfg.d_hidden, reference, model)
    if isinstance(baselines, str) and baselines == "mean":
        b_full = resolve_baseline("mean", model, dummy.new_zeros(1, cfg.n_layers, cfg.d_hidden),
                                  reference)[0]
    return modes, full_target, b_full, batch


def _predict(model: BilinearNet, x: Tensor, run: Run, tgt: Target, b: Tensor | None,
             mode: str, method: str) -> Float[Tensor, "batch layer d_hidden"]:
    """`(b - z) g` for one mode on one chunk (renorm: its own closed form)."""
    if mode == "renorm":                                            # not a gradient: own path
        return renorm_effects(model, run, tgt, b)
    if method == "explicit":
        g = gradients(model, run, tgt, mode)
    else:
        g = gradients_autograd(model, x, tgt, mode, run=run)[0]
    if b is None:                                                   # (b - z) g  [b, L, H]
        return g.mul_(run.z).neg_()                                 # g is ours: in place
    return g.mul_(b - run.z)


def run_with_cache(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
) -> tuple[Float[Tensor, "batch n_out"], dict[str, Tensor]]:
    """One forward pass, and every intermediate under a TransformerLens-style name.

    Args:
        model: the network.
        inputs: `[B, d_in]`.

    Returns:
        `(logits [B, n_out], cache)`; the cache holds `layers.{l}.u`, `.left` (`L u`),
        `.right` (`R u`), `.z`, `.resid` (what the norm normalizes), `.norm.scale` (`s`),
        `.norm.mean` (`mu`), and in pre-norm `final_norm.resid/.scale/.mean`, plus
        `final` (what the head reads) and `logits`.

    Example:
        >>> from bilens.core.config import ModelConfig
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> logits, cache = run_with_cache(model, torch.randn(5, 8))
        >>> cache["layers.1.norm.scale"].shape
        torch.Size([5])
    """
    check_inputs(inputs, model.config.d_in)
    with torch.no_grad():
        run = model.run(inputs.to(device=model.device, dtype=model.dtype), check=False)
    return run.logits, run.cache()


def _check_baselines(baseline: object, n: int, n_layers: int, d_hidden: int,
                    reference: Tensor | None, model: BilinearNet) -> Tensor | None:
    """Validate a baseline spec without running the model; a tensor comes back on the
    model's device and dtype (`[L, H]` or `[B, L, H]`), "zero" as None."""
    if baseline is None or (isinstance(baseline, str) and baseline == "zero"):
        return None
    if isinstance(baseline, str) and baseline == "mean":
        if reference is None:
            raise BilensError("baselines='mean' needs reference=... (inputs [N, d_in] whose mean "
                              "activation is the baseline, e.g. training inputs)")
        check_inputs(reference, model.config.d_in, "reference")
        return None
    if isinstance(baseline, Tensor):
        if tuple(baseline.shape) not in ((n_layers, d_hidden), (n, n_layers, d_hidden)):
            raise BilensError(f"baselines: a tensor must have shape [{n_layers}, {d_hidden}] or "
                              f"[{n}, {n_layers}, {d_hidden}] (z values), got "
                              f"{list(baseline.shape)}")
        if not torch.isfinite(baseline).all():
            raise BilensError("baselines: contains NaN or inf; pass finite z values")
        return baseline.to(device=model.device, dtype=model.dtype)
    raise BilensError(f"baselines: unknown {baseline!r}; expected {BASELINE_HELP}")


def _cat(parts: list[Attribution]) -> Attribution:
    """One `Attribution` from the chunks' (concatenated along the batch)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]

    def cat(values: list[Tensor | None]) -> Tensor | None:
        return None if values[0] is None else torch.cat(values)

    run = None if first.run is None else Run(
        **{name: torch.cat([getattr(p.run, name) for p in parts]) for name in vars(first.run)})
    target = Target(direction=cat([p.target.direction for p in parts]),
                    label=cat([p.target.label for p in parts]), spec=first.target.spec)
    return Attribution({m: torch.cat([p.predicted[m] for p in parts]) for m in first.predicted},
                       run, target, cat([p.baselines for p in parts]))

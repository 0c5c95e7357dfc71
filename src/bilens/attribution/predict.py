"""Every channel's predicted ablation effect from one clean forward and one backward (SPEC §4).

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
from bilens.core.models.fastrun import clean_run
from bilens.core.models.mlp import BilinearNet, Run
from bilens.core.targets import Target, resolve_target

__all__ = ["attribute", "attribute_modes", "Attribution", "gradients", "gradients_autograd",
           "renorm_effects", "run_with_cache", "MODES", "GRADIENT_MODES", "METHODS",
           "DEFAULT_METHOD", "DEFAULT_BATCH_SIZE", "default_batch_size"]

DEFAULT_METHOD = "explicit"     # measured faster than autograd: see docs/attribution.md
DEFAULT_MEMORY = 4 << 30        # bytes of intermediates per internal chunk (4 GiB, as ablation)
DEFAULT_BATCH_SIZE = None       # None: as many inputs as fit in DEFAULT_MEMORY


def default_batch_size(model: BilinearNet, n: int, memory: int = DEFAULT_MEMORY) -> int:
    """Inputs per chunk so that one chunk's clean run and backward stay under `memory` bytes.

    A fixed small chunk leaves a GPU launch-bound (10,000 MNIST inputs in chunks of 1,024
    took 6.6x a forward pass on the H200); one chunk as large as memory allows does not.
    """
    cfg = model.config
    floats = cfg.n_layers * (2 * cfg.d_model + 6 * cfg.d_hidden) + 3 * cfg.n_norms * cfg.d_model
    per_input = floats * torch.finfo(model.dtype).bits // 8
    return max(1, min(n, memory // per_input))


@dataclass
class Attribution:
    """What `attribute_modes` computed for a batch.

    Attributes:
        predicted: mode -> predicted effect `[B, n_layers, d_hidden]`.
        run: the clean run (activations `z`, norm statistics, logits, ...), or None
            when `keep_run=False`.
        target: the resolved target (direction `[B, n_out]` or label `[B]`).
        baseline: `b`, `[B, n_layers, d_hidden]` (None for the zero baseline).
    """

    predicted: dict[str, Tensor]
    run: Run | None
    target: Target
    baseline: Tensor | None = None


def attribute(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    target: object = "predicted",
    mode: str = "frozen",
    baseline: str | Tensor | None = "zero",
    labels: Int[Tensor, " batch"] | None = None,
    reference: Float[Tensor, "ref d_in"] | None = None,
    batch_size: int | None = None,
    return_run: bool = False,
    method: str = DEFAULT_METHOD,
) -> Float[Tensor, "batch layer d_hidden"] | tuple[Tensor, Run]:
    """Predict the effect of ablating every channel on the target, for every input.

    Args:
        model: the network.
        inputs: `[B, d_in]`.
        target: what `f` is (SPEC §2): `"predicted"`, `"label"`, `"logprob"`, `"class:C"`,
            `"diff:C1,C2"`, an int class, an int tensor `[B]`, a float direction `[n_out]`
            or `[B, n_out]`, or a resolved `Target`.
        mode: `"frozen"` (the seed's linearization), `"live"` (the exact gradient) or
            `"renorm"` (live, the first norm hit recomputed exactly; explicit path only).
        baseline: the value `b` an ablated channel takes: `"zero"`, `"mean"` (over
            `reference`), or a tensor `[n_layers, d_hidden]` / `[B, n_layers, d_hidden]`.
        labels: true classes `[B]`, for `"label"` and `"logprob"`.
        reference: inputs `[N, d_in]` whose mean activation is the `"mean"` baseline.
        batch_size: inputs per internal chunk (bounds memory); default: as many as keep a
            chunk's intermediates under 4 GiB (`default_batch_size`).
        return_run: also return the clean `Run` (activations, norm statistics).
        method: `"explicit"` (the written-out backward) or `"autograd"`; same numbers
            (`"renorm"` always uses the explicit backward).

    Returns:
        `predicted [B, n_layers, d_hidden]`: `(b - z) * g`, the predicted change of `f`
        when channel `(l, k)` is set to `b`; or `(predicted, run)` with `return_run`.

    Example:
        >>> from bilens.core.config import ModelConfig
        >>> cfg = ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3)
        >>> model = BilinearNet(cfg)
        >>> attribute(model, torch.randn(5, 8), target="class:1", mode="live").shape
        torch.Size([5, 2, 32])
    """
    check_mode(mode)
    result = attribute_modes(model, inputs, target, (mode,), baseline, labels, reference,
                             batch_size, method, keep_run=return_run)
    predicted = result.predicted[mode]
    return (predicted, result.run) if return_run else predicted


def attribute_modes(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    target: object = "predicted",
    modes: Sequence[str] = GRADIENT_MODES,
    baseline: str | Tensor | None = "zero",
    labels: Int[Tensor, " batch"] | None = None,
    reference: Float[Tensor, "ref d_in"] | None = None,
    batch_size: int | None = None,
    method: str = DEFAULT_METHOD,
    keep_run: bool = True,
) -> Attribution:
    """`attribute` for several modes from one clean forward per chunk.

    Arguments as in `attribute`, with `modes` a sequence of mode names, and `keep_run`:
    keep every chunk's clean `Run` (False saves its memory; `.run` is then None).

    Returns:
        An `Attribution` (predicted per mode, clean run, resolved target, baseline).

    Example:
        >>> from bilens.core.config import ModelConfig
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> out = attribute_modes(model, torch.randn(5, 8), target="predicted",
        ...                       modes=("frozen", "live"))
        >>> out.predicted["frozen"].shape, out.run.z.shape
        (torch.Size([5, 2, 32]), torch.Size([5, 2, 32]))
    """
    cfg = model.config
    # ---- validate everything before any work ----
    if isinstance(modes, str) or not modes:
        raise BilensError(f"modes: expected a non-empty sequence of {list(MODES)}, got {modes!r}")
    modes = tuple(dict.fromkeys(check_mode(m, "modes") for m in modes))
    if method not in METHODS:
        raise BilensError(f"method: expected one of {list(METHODS)}, got {method!r}")
    check_inputs(inputs, cfg.d_in)
    n = inputs.shape[0]
    if batch_size is None:
        batch_size = default_batch_size(model, n)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BilensError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if labels is not None:
        labels = torch.as_tensor(labels).to(model.device).long().flatten()
        if labels.shape[0] != n:
            raise BilensError(f"labels: expected {n} labels, one per input, got {labels.shape[0]}")
    dummy = torch.zeros(n, cfg.n_out, dtype=model.dtype, device=model.device)
    full_target = resolve_target(target, dummy, labels)        # raises on a bad spec or size
    per_chunk = isinstance(target, str) and target == "predicted"   # needs the clean logits
    b_full = _check_baseline(baseline, n, cfg.n_layers, cfg.d_hidden, reference, model)
    if isinstance(baseline, str) and baseline == "mean":        # one pass over the reference
        b_full = resolve_baseline("mean", model, dummy.new_zeros(1, cfg.n_layers, cfg.d_hidden),
                                  reference)[0]
    # ---- work, chunk by chunk ----
    x_all = inputs.to(device=model.device, dtype=model.dtype)
    predicted: dict[str, list[Tensor]] = {m: [] for m in modes}
    runs, targets, baselines = [], [], []
    for start in range(0, n, batch_size):
        index = slice(start, min(start + batch_size, n))
        x = x_all[index]
        run = clean_run(model, x)
        tgt = (resolve_target("predicted", run.logits) if per_chunk
               else full_target.select(index))
        b = None if b_full is None else (b_full if b_full.ndim == 2 else b_full[index])
        for m in modes:
            if m == "renorm":                                       # not a gradient: own path
                predicted[m].append(renorm_effects(model, run, tgt, b))
                continue
            if method == "explicit":
                g = gradients(model, run, tgt, m)
            else:
                g = gradients_autograd(model, x, tgt, m, run=run)[0]
            if b is None:                                           # (b - z) g  [b, L, H]
                predicted[m].append(g.mul_(run.z).neg_())          # g is ours: in place
            else:
                predicted[m].append(g.mul_(b - run.z))
        if keep_run:
            runs.append(run)
        targets.append(tgt)
        if b is not None:
            baselines.append(b.expand_as(run.z))
    return Attribution(
        predicted={m: p[0] if len(p) == 1 else torch.cat(p) for m, p in predicted.items()},
        run=_cat_runs(runs) if keep_run else None,
        target=_cat_targets(targets),
        baseline=torch.cat(baselines) if baselines else None,
    )


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


def _check_baseline(baseline: object, n: int, n_layers: int, d_hidden: int,
                    reference: Tensor | None, model: BilinearNet) -> Tensor | None:
    """Validate a baseline spec without running the model; a tensor comes back on the
    model's device and dtype (`[L, H]` or `[B, L, H]`), "zero" as None."""
    if baseline is None or (isinstance(baseline, str) and baseline == "zero"):
        return None
    if isinstance(baseline, str) and baseline == "mean":
        if reference is None:
            raise BilensError("baseline='mean' needs reference=... (inputs [N, d_in] whose mean "
                              "activation is the baseline, e.g. training inputs)")
        check_inputs(reference, model.config.d_in, "reference")
        return None
    if isinstance(baseline, Tensor):
        if tuple(baseline.shape) not in ((n_layers, d_hidden), (n, n_layers, d_hidden)):
            raise BilensError(f"baseline: a tensor must have shape [{n_layers}, {d_hidden}] or "
                              f"[{n}, {n_layers}, {d_hidden}] (z values), got "
                              f"{list(baseline.shape)}")
        if not torch.isfinite(baseline).all():
            raise BilensError("baseline: contains NaN or inf; pass finite z values")
        return baseline.to(device=model.device, dtype=model.dtype)
    raise BilensError(f"baseline: unknown {baseline!r}; expected {BASELINE_HELP}")


def _cat_runs(runs: list[Run]) -> Run:
    if len(runs) == 1:
        return runs[0]
    return Run(**{name: torch.cat([getattr(r, name) for r in runs]) for name in vars(runs[0])})


def _cat_targets(targets: list[Target]) -> Target:
    if len(targets) == 1:
        return targets[0]
    first = targets[0]
    return Target(
        direction=None if first.direction is None else torch.cat([t.direction for t in targets]),
        label=None if first.label is None else torch.cat([t.label for t in targets]),
        spec=first.spec,
    )

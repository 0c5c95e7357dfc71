"""The ground truth of SPEC §3: what ablating a channel actually does to the target.

    actual(x, l, k) = f(x | z_{l,k} := b) - f(x)

in the real network (every norm recomputes its statistics), or with `frozen_norm=True`
in the network whose norms hold the clean run's `s` (LayerNorm centering stays live: the
network the frozen attribution linearizes).

Three entry points:

- `ablation_effects`: every selected channel of every input, fast and exact. It reuses
  the clean prefix, propagates the *perturbation* (difference from the clean run) through
  the suffix in closed form where it can (`bilens.perturb`), batches many ablations per
  matmul and streams in chunks under a memory budget.
- `ablation_effects_loop`: the plain reference, one channel at a time through
  `model.run(x, Intervention(patch=...))` (batched over inputs).
- `joint_ablation_effect`: a set of channels per input ablated together (circuits).
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from bilens.ablation._engine.plan import Plan
from bilens.ablation._engine.steps import PRECISIONS
from bilens.core.baselines import resolve_baseline
from bilens.core.errors import BilensError, check_inputs
from bilens.core.models.fastrun import clean_run
from bilens.core.models.intervention import Intervention
from bilens.core.models.mlp import Run
from bilens.core.targets import Target, resolve_target

if TYPE_CHECKING:
    from bilens.core.models.mlp import BilinearNet

CPU_CHUNK_FLOATS = 2**20   # 4 MB per [ablations, d_hidden] tensor: fastest measured on CPU
Channels = Sequence[int] | Mapping[int, Sequence[int]] | Tensor | None


def parse_memory(memory: str | int | float) -> int:
    """Bytes from `"4GiB"`, `"512MB"`, `"1e9"` or a number.

    Args:
        memory: a size with an optional unit (B, KB, MB, GB, KiB, MiB, GiB).

    Returns:
        The size in bytes.
    """
    if isinstance(memory, (int, float)) and not isinstance(memory, bool):
        if memory <= 0:
            raise BilensError(f"memory: expected a positive size, got {memory!r}")
        return int(memory)
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(memory))
    if m is None or m.group(2).lower() not in units:
        raise BilensError(f"memory: cannot read {memory!r}; write e.g. '4GiB', '512MB' or a "
                          f"number of bytes")
    try:
        value = float(m.group(1)) * units[m.group(2).lower()]
    except ValueError:
        raise BilensError(f"memory: cannot read {memory!r}; write e.g. '4GiB'") from None
    if value <= 0:
        raise BilensError(f"memory: expected a positive size, got {memory!r}")
    return int(value)


def channel_mask(
    n_layers: int, d_hidden: int, layers: Sequence[int] | None = None, channels: Channels = None,
) -> Bool[Tensor, "layer d_hidden"]:
    """Which channels to ablate, as a bool mask `[n_layers, d_hidden]`.

    Args:
        n_layers, d_hidden: the model's sizes.
        layers: layer indices (negative counts from the end); None means all.
        channels: None (all), channel indices applied to every selected layer,
            `{layer: indices}`, or a bool mask `[n_layers, d_hidden]`.

    Returns:
        The mask (CPU).
    """
    mask = torch.zeros(n_layers, d_hidden, dtype=torch.bool)
    if layers is None:
        chosen = list(range(n_layers))
    else:
        chosen = []
        for l in layers:
            if not -n_layers <= int(l) < n_layers:
                raise BilensError(f"layers: {l} is out of range; the model has {n_layers} "
                                  f"layers (0..{n_layers - 1})")
            chosen.append(int(l) % n_layers)
    if isinstance(channels, Tensor) and channels.dtype == torch.bool:
        if tuple(channels.shape) != (n_layers, d_hidden):
            raise BilensError(f"channels: a bool mask must be [n_layers, d_hidden] = "
                              f"[{n_layers}, {d_hidden}], got {list(channels.shape)}")
        mask[chosen] = channels.cpu()[chosen]
        return mask
    per_layer: dict[int, Sequence[int] | None]
    if isinstance(channels, Mapping):
        for l in channels:
            if not -n_layers <= int(l) < n_layers:
                raise BilensError(f"channels: layer {l} is out of range; the model has "
                                  f"{n_layers} layers (0..{n_layers - 1})")
        per_layer = {int(l) % n_layers: v for l, v in channels.items()}
        chosen = [l for l in chosen if l in per_layer]
    else:
        per_layer = {l: channels for l in chosen}
    for l in chosen:
        idx = per_layer[l]
        if idx is None:
            mask[l] = True
            continue
        idx = torch.as_tensor(idx, dtype=torch.long).flatten()
        if idx.numel() and (idx.min() < -d_hidden or idx.max() >= d_hidden):
            raise BilensError(f"channels: indices must lie in 0..{d_hidden - 1}, got "
                              f"{idx.min().item()}..{idx.max().item()}")
        mask[l, idx % d_hidden] = True
    return mask


def _prepare(model: BilinearNet, inputs: Tensor, target: object, baseline: object,
             labels: Tensor | None, reference: Tensor | None):
    """Clean run, fixed target, baseline `b [B, L, H]`."""
    check_inputs(inputs, model.config.d_in)
    x = inputs.to(device=model.device, dtype=model.dtype)
    clean = clean_run(model, x)
    if labels is not None:
        labels = torch.as_tensor(labels).to(model.device)
    tgt = resolve_target(target, clean.logits, labels)
    b = resolve_baseline(baseline, model, clean.z, reference)
    return x, clean, tgt, b


@torch.no_grad()
def ablation_effects_loop(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    target: object = "predicted",
    baseline: str | Tensor | None = "zero",
    *,
    labels: Tensor | None = None,
    reference: Tensor | None = None,
    layers: Sequence[int] | None = None,
    channels: Channels = None,
    frozen_norm: bool = False,
    progress: bool = False,
) -> Float[Tensor, "batch layer d_hidden"]:
    """The plain reference: one forward pass per channel (batched over inputs).

    Args:
        model: the network.
        inputs: `[B, d_in]`.
        target: any spec of `bilens.core.targets.resolve_target`, resolved once on the clean run.
        baseline: `"zero"`, `"mean"` (needs `reference`), or a tensor of `z` values
            (`[L, H]` or `[B, L, H]`).
        labels: true classes `[B]` (for `"label"` and `"logprob"` targets).
        reference: inputs whose mean activation is the `"mean"` baseline.
        layers, channels: which channels to ablate (see `channel_mask`).
        frozen_norm: hold every norm's `s` at the clean run's value.
        progress: show a progress bar.

    Returns:
        `[B, n_layers, d_hidden]` effects `f(ablated) - f(clean)`; NaN where not ablated.
    """
    cfg = model.config
    x, clean, tgt, b = _prepare(model, inputs, target, baseline, labels, reference)
    mask = channel_mask(cfg.n_layers, cfg.d_hidden, layers, channels)
    f0 = tgt(clean.logits)                                                    # [B]
    out = torch.full_like(clean.z, float("nan"))
    scale = clean.scale if frozen_norm else None
    pairs = mask.nonzero().tolist()
    if progress:
        from tqdm import tqdm
        pairs = tqdm(pairs, desc="ablation (loop)", unit="channel")
    for l, k in pairs:
        one = torch.zeros(cfg.d_hidden, dtype=torch.bool, device=x.device)
        one[k] = True
        run = model.run(x, Intervention(scale=scale, patch={l: (one, b[:, l])}), check=False)
        out[:, l, k] = tgt(run.logits) - f0
    return out


@torch.no_grad()
def joint_ablation_effect(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    target: object,
    mask: Bool[Tensor, "batch layer d_hidden"],
    baseline: str | Tensor | None = "zero",
    *,
    labels: Tensor | None = None,
    reference: Tensor | None = None,
    frozen_norm: bool = False,
) -> Float[Tensor, " batch"]:
    """Ablate a set of channels per input together: `f(x | z[mask] := b) - f(x)`.

    Args:
        model: the network.
        inputs: `[B, d_in]`.
        target: target spec, resolved once on the clean run.
        mask: `[B, n_layers, d_hidden]` (or `[n_layers, d_hidden]`), True where ablated.
        baseline, labels, reference, frozen_norm: as in `ablation_effects`.

    Returns:
        `[B]` joint effects.

    Example:
        >>> from bilens.core.config import ModelConfig
        >>> from bilens.core.models.mlp import BilinearNet
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> mask = torch.zeros(4, 2, 32, dtype=torch.bool)
        >>> mask[:, 1, :8] = True                          # layer 1's first 8 channels together
        >>> joint_ablation_effect(model, torch.randn(4, 8), target="predicted", mask=mask).shape
        torch.Size([4])
    """
    x, clean, tgt, b = _prepare(model, inputs, target, baseline, labels, reference)
    mask = torch.as_tensor(mask, device=x.device)
    if mask.shape == clean.z.shape[1:]:
        mask = mask.expand_as(clean.z)
    if mask.shape != clean.z.shape or mask.dtype != torch.bool:
        raise BilensError(f"mask: expected a bool tensor [batch, n_layers, d_hidden] = "
                          f"{list(clean.z.shape)}, got {mask.dtype} {list(mask.shape)}")
    patch = {l: (mask[:, l], b[:, l]) for l in range(model.config.n_layers) if mask[:, l].any()}
    frozen = Intervention(scale=clean.scale if frozen_norm else None, patch=patch)
    run = model.run(x, frozen, check=False)
    return tgt(run.logits) - tgt(clean.logits)


def ablation_effects(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    target: object = "predicted",
    baseline: str | Tensor | None = "zero",
    *,
    labels: Tensor | None = None,
    reference: Tensor | None = None,
    layers: Sequence[int] | None = None,
    channels: Channels = None,
    frozen_norm: bool = False,
    memory: str | int = "4GiB",
    progress: bool = False,
    precision: str = "fp32",
    compile: bool = False,
) -> Float[Tensor, "batch layer d_hidden"]:
    """Exhaustive ablation: the actual effect of every selected channel on every input.

    Args:
        model: the network.
        inputs: `[B, d_in]`.
        target: any spec of `bilens.core.targets.resolve_target` (`"predicted"`, `"label"`,
            `"logprob"`, `"class:C"`, `"diff:C1,C2"`, class tensors, directions),
            resolved once on the clean run and then kept fixed.
        baseline: `"zero"`, `"mean"` (needs `reference`), or `z` values `[L, H]` /
            `[B, L, H]` (e.g. `bilens.core.baselines.from_inputs(model, x_other)`).
        labels: true classes `[B]` (for `"label"` and `"logprob"`).
        reference: inputs whose mean activation is the `"mean"` baseline.
        layers, channels: which channels to ablate (see `channel_mask`); default all.
        frozen_norm: hold every norm's `s` at the clean value (LayerNorm centering live).
        memory: working-memory budget for the chunks, e.g. `"4GiB"` (the clean run and
            the `[B, L, H]` result come on top). On a CPU chunks are also kept cache-sized
            and spread over `torch.get_num_threads()` single-threaded workers.
        progress: show a progress bar over input chunks.
        precision: `"fp32"`, or `"3xtf32"` / `"3xfp16"` (CUDA, float32 models; `"3xfp16"`
            needs `compile` and Triton, else it runs as `"3xtf32"`): the large matmuls on
            the tensor cores with float32-level accuracy (check it: `bilens bench`).
        compile: fuse the elementwise steps with `torch.compile` (CUDA; first call slow).

    Returns:
        `[B, n_layers, d_hidden]` effects `f(ablated) - f(clean)`; NaN where not ablated.

    Example:
        >>> from bilens.core.config import ModelConfig
        >>> from bilens.core.models.mlp import BilinearNet
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> actual = ablation_effects(model, torch.randn(5, 8), target="predicted")
        >>> actual.shape
        torch.Size([5, 2, 32])
    """
    return _fast_effects(model, inputs, target, baseline, labels, reference, layers, channels,
                         frozen_norm, memory, progress, precision, compile)


@torch.no_grad()
def _fast_effects(model, inputs, target, baseline, labels, reference, layers, channels,
                  frozen_norm, memory, progress, precision, compile):
    cfg = model.config
    x, clean, tgt, b = _prepare(model, inputs, target, baseline, labels, reference)
    mask = channel_mask(cfg.n_layers, cfg.d_hidden, layers, channels)
    if precision not in PRECISIONS:
        raise BilensError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    on_cuda = x.device.type == "cuda"
    if precision != "fp32" and not (on_cuda and x.dtype == torch.float32):
        precision = "fp32"                       # TF32 exists only on CUDA float32 matmuls
    plan = Plan(model, frozen=frozen_norm, precision=precision, compile=compile and on_cuda)
    out = torch.full_like(clean.z, float("nan"))                             # [B, L, H]
    budget = max(1, parse_memory(memory) // plan.work_bytes())               # ablations/chunk
    if not on_cuda:          # CPU: chunks whose [chunk, d_hidden] tensors stay in cache
        budget = min(budget, max(64, CPU_CHUNK_FLOATS // cfg.d_hidden))
    jobs = []
    for l in range(cfg.n_layers):
        ks = mask[l].nonzero().flatten().to(x.device)
        if ks.numel() == 0:
            continue
        kc = min(ks.numel(), budget)
        bc = max(1, min(x.shape[0], budget // kc))
        for k0 in range(0, ks.numel(), kc):
            kk = _as_slice(ks[k0:k0 + kc])
            for b0 in range(0, x.shape[0], bc):
                jobs.append((l, kk, slice(b0, b0 + bc)))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="ablation", unit="chunk")

    def job(spec: tuple[int, Tensor | slice, slice]) -> None:
        l, kk, rows = spec
        run = _slice_run(clean, rows)
        c = b[rows, l][:, kk] - run.z[:, l][:, kk]                           # [Bc, K]
        out[rows, l, kk] = plan.effects(run, tgt.select(rows), c, l, kk)     # disjoint blocks
        if bar is not None:
            bar.update()

    threads = torch.get_num_threads()
    if on_cuda or threads == 1 or len(jobs) < 2:
        for spec in jobs:
            job(spec)
    else:
        # CPU: one single-threaded chunk per worker instead of every op split over threads.
        # Same speed on an idle machine; on a shared one no op waits at a barrier for a
        # descheduled thread (measured 15x slower with 2 intra-op threads under load).
        from concurrent.futures import ThreadPoolExecutor
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(job, jobs))
        finally:
            torch.set_num_threads(threads)
    if bar is not None:
        bar.close()
    return out


def _as_slice(ks: Tensor) -> Tensor | slice:
    """A contiguous run of channel indices as a slice (views instead of gathers)."""
    first, n = int(ks[0]), ks.numel()
    if int(ks[-1]) - first + 1 == n:
        return slice(first, first + n)
    return ks


def _slice_run(run: Run, rows: slice) -> Run:
    return Run(**{f.name: getattr(run, f.name)[rows] for f in fields(run)})


__all__ = ["ablation_effects", "ablation_effects_loop", "joint_ablation_effect", "channel_mask",
           "parse_memory", "Target"]

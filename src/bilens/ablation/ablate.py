"""Exhaustive ablation, fast and exact: every selected channel of every input (SPEC §3).

It reuses the clean prefix, propagates the *perturbation* (difference from the clean run)
through the suffix in closed form where it can (the private `_engine`), batches many
ablations per matmul and streams in chunks under a memory budget. The plain references it
must equal are in `bilens.ablation.reference`.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields

import torch
from jaxtyping import Float, Int
from torch import Tensor

from bilens.ablation._engine.backend import resolve_backend
from bilens.ablation._engine.plan import Plan
from bilens.ablation.reference import prepare
from bilens.ablation.select import channel_mask
from bilens.core.memory import DEFAULT_MEMORY, parse_memory
from bilens.core.models.mlp import BilinearNet, Run
from bilens.core.types import BaselineSpec, ChannelSpec, TargetSpec

CPU_CHUNK_FLOATS = 2**20   # 4 MB per [ablations, d_hidden] tensor: fastest measured on CPU
Job = tuple[int, Tensor | slice, slice]        # (layer, channels, input rows)


@torch.no_grad()
def ablation_effects(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    *,
    target: TargetSpec = "predicted",
    baselines: BaselineSpec = "zero",
    labels: Int[Tensor, " batch"] | None = None,
    reference: Float[Tensor, "ref d_in"] | None = None,
    layers: Sequence[int] | None = None,
    channels: ChannelSpec = None,
    frozen_norm: bool = False,
    memory: str | int = DEFAULT_MEMORY,
    backend: str | None = None,
    precision: str | None = None,
    progress: bool = False,
) -> Float[Tensor, "batch layer d_hidden"]:
    """Exhaustive ablation: the actual effect of every selected channel on every input.

    Args:
        model: the network.
        inputs: `[B, d_in]`.
        target: any spec of `bilens.core.targets.resolve_target` (`"predicted"`, `"label"`,
            `"logprob"`, `"class:C"`, `"diff:C1,C2"`, class tensors, directions),
            resolved once on the clean run and then kept fixed.
        baselines: `"zero"`, `"mean"` (needs `reference`), or `z` values `[L, H]` /
            `[B, L, H]` (e.g. `bilens.core.baselines.from_inputs(model, x_other)`).
        labels: true classes `[B]` (for `"label"` and `"logprob"`).
        reference: inputs whose mean activation is the `"mean"` baseline.
        layers, channels: which channels to ablate (see `channel_mask`); default all.
        frozen_norm: hold every norm's `s` at the clean value (LayerNorm centering live).
        memory: working-memory budget for the chunks, e.g. `"4GiB"` (the clean run and
            the `[B, L, H]` result come on top). On a CPU chunks are also kept cache-sized
            and spread over `torch.get_num_threads()` single-threaded workers.
        backend: `"eager"` (the default on every device), `"compile"` or `"triton"` (CUDA);
            see `bilens.ablation._engine.backend`.
        precision: `"fp32"` (default), `"3xtf32"` or `"3xfp16"` (Triton only; the default
            with `backend="triton"`): the large products on the tensor cores with float32
            accuracy (check it: `bilens bench`).
        progress: show a progress bar over chunks.

    Returns:
        `[B, n_layers, d_hidden]` effects `f(ablated) - f(clean)`; NaN where not ablated.

    Example:
        >>> from bilens import BilinearNet, ModelConfig
        >>> model = BilinearNet(ModelConfig(d_in=4, d_model=8, d_hidden=6, n_layers=2, n_out=3))
        >>> ablation_effects(model, torch.randn(5, 4), target="class:1").shape
        torch.Size([5, 2, 6])
    """
    cfg = model.config
    x, clean, tgt, b = prepare(model, inputs, target, baselines, labels, reference)
    mask = channel_mask(cfg.n_layers, cfg.d_hidden, layers, channels)
    backend, precision = resolve_backend(backend, precision, x.device, x.dtype)
    plan = Plan(model, frozen=frozen_norm, precision=precision, backend=backend)
    out = torch.full_like(clean.z, float("nan"))                             # [B, L, H]
    budget = max(1, parse_memory(memory) // plan.work_bytes())               # ablations/chunk
    if x.device.type != "cuda":     # CPU: chunks whose [chunk, d_hidden] tensors stay in cache
        budget = min(budget, max(64, CPU_CHUNK_FLOATS // cfg.d_hidden))
    jobs = _jobs(mask, x.shape[0], budget, x.device)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="ablation", unit="chunk")

    def job(spec: Job) -> None:
        l, kk, rows = spec
        run = _slice_run(clean, rows)
        c = b[rows, l][:, kk] - run.z[:, l][:, kk]                           # [Bc, K]
        out[rows, l, kk] = plan.effects(run, tgt.select(rows), c, l, kk)     # disjoint blocks
        if bar is not None:
            bar.update()

    _run_jobs(job, jobs, parallel=x.device.type != "cuda")
    if bar is not None:
        bar.close()
    return out


def _jobs(mask: Tensor, n: int, budget: int, device: torch.device) -> list[Job]:
    """Chunks of at most `budget` ablations: one layer's channels x a run of inputs."""
    jobs = []
    for l in range(mask.shape[0]):
        ks = mask[l].nonzero().flatten().to(device)
        if ks.numel() == 0:
            continue
        kc = min(ks.numel(), budget)
        bc = max(1, min(n, budget // kc))
        for k0 in range(0, ks.numel(), kc):
            kk = _as_slice(ks[k0:k0 + kc])
            for b0 in range(0, n, bc):
                jobs.append((l, kk, slice(b0, b0 + bc)))
    return jobs


def _run_jobs(job: Callable[[Job], None], jobs: list[Job], parallel: bool) -> None:
    """Run every chunk; on a CPU with several threads, one single-threaded chunk per worker
    instead of every op split over threads. Same speed on an idle machine; on a shared one
    no op waits at a barrier for a descheduled thread (measured 15x slower with 2 intra-op
    threads under load)."""
    threads = torch.get_num_threads()
    if not parallel or threads == 1 or len(jobs) < 2:
        for spec in jobs:
            job(spec)
        return
    from concurrent.futures import ThreadPoolExecutor
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(job, jobs))
    finally:
        torch.set_num_threads(threads)


def _as_slice(ks: Tensor) -> Tensor | slice:
    """A contiguous run of channel indices as a slice (views instead of gathers)."""
    first, n = int(ks[0]), ks.numel()
    if int(ks[-1]) - first + 1 == n:
        return slice(first, first + n)
    return ks


def _slice_run(run: Run, rows: slice) -> Run:
    return Run(**{f.name: getattr(run, f.name)[rows] for f in fields(run)})

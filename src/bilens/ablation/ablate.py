"""Exhaustive ablation, fast and exact: every selected channel of every input (docs/spec.md §3).

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
from bilens.core import distributed
from bilens.core.memory import DEFAULT_MEMORY, parse_memory
from bilens.core.models.mlp import BilinearNet, Run
from bilens.core.types import BaselineSpec, ChannelSpec, TargetSpec

CPU_CHUNK_FLOATS = 2**20   # 4 MB per [ablations, d_hidden] tensor: fastest measured on CPU
LAST_LAYER_COST = 0.1      # a last-layer chunk (closed form at the head), in suffix layers
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
        progress: show a progress bar over chunks (on rank 0 only).

    Returns:
        `[B, n_layers, d_hidden]` effects `f(ablated) - f(clean)`; NaN where not ablated.

    Under `torchrun` (an active `torch.distributed` process group) the chunks are split
    across the ranks by estimated cost (`ablation_split`), each rank computes its share, and
    every rank returns the whole result, the same chunks computed as in one process. It is
    then a collective: every rank must call it, with the same arguments.

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
    jobs = _jobs(mask, x.shape[0], _budget(plan, memory, x.device), x.device)
    world = distributed.world()
    costs = [_cost(spec, x.shape[0], cfg.n_layers) for spec in jobs]
    shares = _shares(costs, world.world_size if world.active else 1)
    mine = [jobs[j] for j in shares[world.rank if world.active else 0]]
    bar = None
    if progress and world.is_main:
        from tqdm import tqdm
        bar = tqdm(total=len(mine), desc="ablation", unit="chunk")

    def job(spec: Job) -> None:
        l, kk, rows = spec
        run = _slice_run(clean, rows)
        c = b[rows, l][:, kk] - run.z[:, l][:, kk]                           # [Bc, K]
        out[rows, l, kk] = plan.effects(run, tgt.select(rows), c, l, kk)     # disjoint blocks
        if bar is not None:
            bar.update()

    try:
        with distributed.guard():        # a failure here reaches the other ranks' next agree
            _run_jobs(job, mine, parallel=x.device.type != "cuda")
    finally:
        if bar is not None:
            bar.close()
    if world.active:
        distributed.share_blocks(out, [[_block(jobs[j]) for j in s] for s in shares])
    return out


def ablation_split(
    model: BilinearNet,
    n_inputs: int,
    *,
    layers: Sequence[int] | None = None,
    channels: ChannelSpec = None,
    memory: str | int = DEFAULT_MEMORY,
    backend: str | None = None,
    precision: str | None = None,
    world_size: int | None = None,
) -> dict[str, object]:
    """How `ablation_effects` with these arguments splits its chunks over `world_size` ranks
    (default: the active process group's, else 1), as recorded in `metrics.json`.

    The chunks are the one-process chunks, unchanged (so every element is computed as in
    one process); a chunk of layer `l` with `n` ablations is estimated to cost
    `n * (n_layers - 1 - l + LAST_LAYER_COST)`: the layers its suffix reruns, plus the closed
    form at the head (measured on a CPU, docs/distributed.md). The chunks go to the ranks
    largest first, each to the least-loaded rank (longest processing time first).

    Returns:
        `{"world_size", "split", "jobs", "jobs_per_rank", "estimated_cost_per_rank",
        "balance"}`, `balance` being the mean over the largest estimated cost per rank.
    """
    cfg = model.config
    if world_size is None:
        world = distributed.world()
        world_size = world.world_size if world.active else 1
    mask = channel_mask(cfg.n_layers, cfg.d_hidden, layers, channels)
    backend, precision = resolve_backend(backend, precision, model.device, model.dtype)
    plan = Plan(model, precision=precision, backend=backend)
    jobs = _jobs(mask, n_inputs, _budget(plan, memory, model.device), model.device)
    costs = [_cost(spec, n_inputs, cfg.n_layers) for spec in jobs]
    shares = _shares(costs, world_size)
    per_rank = [sum(costs[j] for j in s) for s in shares]
    return {"world_size": world_size,
            "split": "ablation chunks (layer, channels, input rows) by estimated cost (LPT)",
            "jobs": len(jobs), "jobs_per_rank": [len(s) for s in shares],
            "estimated_cost_per_rank": [round(c, 2) for c in per_rank],
            "balance": round(sum(per_rank) / world_size / max(max(per_rank), 1e-9), 4)}


def _budget(plan: Plan, memory: str | int, device: torch.device) -> int:
    """Ablations per chunk: the memory budget, and on a CPU cache-sized chunks."""
    budget = max(1, parse_memory(memory) // plan.work_bytes())
    if device.type != "cuda":       # CPU: chunks whose [chunk, d_hidden] tensors stay in cache
        budget = min(budget, max(64, CPU_CHUNK_FLOATS // plan.cfg.d_hidden))
    return budget


def _cost(spec: Job, n: int, n_layers: int) -> float:
    """Estimated cost of a chunk: its ablations times the layers its suffix reruns (the
    last layer's closed form at the head counted as `LAST_LAYER_COST` of a layer)."""
    l, kk, rows = spec
    k = kk.stop - kk.start if isinstance(kk, slice) else kk.numel()
    return k * len(range(*rows.indices(n))) * (n_layers - 1 - l + LAST_LAYER_COST)


def _shares(costs: list[float], world_size: int) -> list[list[int]]:
    """Each rank's chunks (indices into the job list); one rank: all of them, in order."""
    if world_size == 1:
        return [list(range(len(costs)))]
    return distributed.assign_lpt(costs, world_size)


def _block(spec: Job) -> tuple:
    """The index of a chunk's block in the `[B, L, H]` result."""
    l, kk, rows = spec
    return (rows, l, kk)


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

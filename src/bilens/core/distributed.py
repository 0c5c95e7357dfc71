"""The distributed context: which rank this process is, of how many, and the few collectives
bilens needs, all on `torch.distributed` (no scheduler of bilens's own).

A run launched by `torchrun --nproc-per-node N -m bilens ...` has `RANK`, `WORLD_SIZE` and
`LOCAL_RANK` in its environment; `init_if_launched` turns that into a process group (NCCL
for CUDA tensors and gloo for CPU tensors on a GPU host, gloo alone on a CPU host). Work is
split as lists of independent jobs: `assign_lpt` gives each rank its share by estimated cost,
`share_blocks` sends every rank's disjoint blocks of a result tensor to every rank, and
`agree` is the one status check all ranks reach at the same points, so that a failure on any
rank ends every rank with `RankFailed` instead of a hang.

Example:
    >>> w = world()                     # not launched: one process
    >>> (w.rank, w.world_size, w.active)
    (0, 1, False)
    >>> assign_lpt([4.0, 3.0, 3.0, 2.0, 2.0], 2)
    [[0, 3, 4], [1, 2]]
"""

from __future__ import annotations

import heapq
import os
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from bilens.core.errors import BilensError

TIMEOUT_ENV = "BILENS_DIST_TIMEOUT_S"    # seconds a collective waits for a silent rank
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class World:
    """This process's place in the run.

    Attributes:
        rank: 0 .. world_size - 1.
        world_size: number of processes (1 when not launched by torchrun).
        local_rank: rank on this host (picks the GPU).
        backend: the process group's backend (`"gloo"`, `"cpu:gloo,cuda:nccl"`), None when
            no process group is active.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        """True when a process group of several ranks is initialized: work is then split."""
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class RankFailed(BilensError):
    """One or more ranks failed; raised on every rank by the `agree` that saw it.

    Attributes:
        failures: `{rank: "ExceptionType: message"}` of the ranks that failed.
        usage: True when every failure was a `BilensError` (bad input, exit status 2).
    """

    def __init__(self, failures: dict[int, str], usage: bool, world_size: int):
        self.failures, self.usage = failures, usage
        by_message: dict[str, list[int]] = {}
        for rank, message in sorted(failures.items()):
            by_message.setdefault(message, []).append(rank)
        if len(by_message) == 1 and len(failures) == world_size:
            super().__init__(f"{next(iter(by_message))} (on every rank)")
            return
        parts = [f"{'rank' if len(r) == 1 else 'ranks'} {', '.join(map(str, r))} failed: {m}"
                 for m, r in by_message.items()]
        super().__init__("; ".join(parts))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise BilensError(f"{name}: expected an integer (torchrun sets it), got {value!r}") \
            from None


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several."""
    return _env_int("WORLD_SIZE", 1) > 1


def world() -> World:
    """The process group's rank and size when one is initialized, else torchrun's environment
    (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`; backend None), else one process."""
    local = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), local, str(dist.get_backend()))
    return World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), local, None)


def timeout_s() -> float:
    """How long a collective waits for a rank that does not arrive (`BILENS_DIST_TIMEOUT_S`)."""
    value = os.environ.get(TIMEOUT_ENV)
    try:
        return DEFAULT_TIMEOUT_S if value is None else float(value)
    except ValueError:
        raise BilensError(f"{TIMEOUT_ENV}: expected seconds, got {value!r}") from None


def init_if_launched() -> World:
    """Initialize the process group when launched as one of several processes (no-op else).

    On a host with CUDA each rank takes GPU `LOCAL_RANK` and the group runs NCCL for CUDA
    tensors and gloo for CPU tensors; on a CPU host gloo only. Collectives time out after
    `timeout_s()` seconds (`BILENS_DIST_TIMEOUT_S`, default 1800).
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise BilensError("torch.distributed is not available in this torch build; run as "
                          "one process (python -m bilens ...)")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    return world()


def device() -> torch.device:
    """This rank's device: `cuda:LOCAL_RANK` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", world().local_rank)
    return torch.device("cpu")


def is_main() -> bool:
    """True on rank 0 (and in a one-process run): the rank that prints and writes."""
    return world().rank == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world().active:
        dist.barrier()


def shutdown() -> None:
    """Destroy the process group if one is initialized, once every rank has reached this
    point (a rank tearing down while another still talks to it can abort in gloo)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def agree(error: BaseException | None = None) -> None:
    """The status check: every rank calls it at the same points, a failed rank with its error.

    Returns when every rank passed None; otherwise raises `RankFailed` on every rank (the
    failed ones included), naming each failed rank and its error. In one process it re-raises
    `error` (if any). Every rank leaves the same `agree` with the same `RankFailed`, so the
    ranks are then at the same point (the CLI meets them once more, at a final barrier).
    """
    w = world()
    if not w.active:
        if error is not None:
            raise error
        return
    flags = torch.zeros(w.world_size, dtype=torch.int64, device=_status_device(w))
    flags[w.rank] = 0 if error is None else (1 if isinstance(error, BilensError) else 2)
    dist.all_reduce(flags)
    if not flags.any():
        return
    messages: list[Any] = [None] * w.world_size
    dist.all_gather_object(messages, None if error is None else _describe(error))
    failed = {r: messages[r] for r in range(w.world_size) if flags[r]}
    raise RankFailed(failed, bool((flags[flags > 0] == 1).all()), w.world_size)


@contextmanager
def guard() -> Iterator[None]:
    """Run this rank's share of a split computation: an exception inside (not a Ctrl-C) is
    sent to the other ranks, whose next `agree` (e.g. in `share_blocks`) then raises
    `RankFailed` as this one does. In one process, exceptions pass through unchanged."""
    try:
        yield
    except RankFailed:
        raise
    except Exception as err:
        if world().active:
            agree(err)
        raise


def _status_device(w: World) -> torch.device:
    """The CPU (gloo) unless the group is NCCL alone (a caller's own `init_process_group`)."""
    return device() if w.backend == "nccl" else torch.device("cpu")


def _describe(error: BaseException) -> str:
    if isinstance(error, BilensError):
        return str(error)
    return "".join(traceback.format_exception_only(type(error), error)).strip()


def assign_lpt(costs: Sequence[float], n_ranks: int) -> list[list[int]]:
    """Longest processing time first: jobs by decreasing cost, each to the least-loaded rank.

    Deterministic (ties go to the earlier job and the lower rank), so every rank computes the
    same assignment without communicating. Its makespan is at most 4/3 of the optimum.

    Args:
        costs: estimated cost of each job.
        n_ranks: number of ranks.

    Returns:
        per rank, the indices of its jobs, in increasing order.
    """
    heap = [(0.0, r) for r in range(n_ranks)]                      # (load, rank)
    shares: list[list[int]] = [[] for _ in range(n_ranks)]
    for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        load, r = heapq.heappop(heap)
        shares[r].append(j)
        heapq.heappush(heap, (load + costs[j], r))
    return [sorted(s) for s in shares]


def share_blocks(out: Tensor, blocks: Sequence[Sequence[tuple]]) -> None:
    """Fill every rank's `out` with every rank's blocks (an all-gather, values copied as is).

    Args:
        out: the result tensor; on this rank, `out[idx]` is already computed for each `idx`
            in `blocks[rank]`.
        blocks: per rank, the index tuples (`out[idx]`) of the disjoint blocks it computed,
            in the same order on every rank.

    The blocks travel as one flat tensor per rank (padded to the longest), so no value is
    summed or rounded: every rank ends with the bit-identical tensor.
    """
    w = world()
    if not w.active:
        return
    agree()                                   # a failed rank never reaches the all-gather
    meta = torch.empty(out.shape, device="meta")                  # block shapes, no copies
    shapes = [[meta[_on_cpu(idx)].shape for idx in b] for b in blocks]
    sizes = [sum(s.numel() for s in rank_shapes) for rank_shapes in shapes]
    flat = torch.zeros(max(sizes), dtype=out.dtype, device=out.device)
    if blocks[w.rank]:
        flat[:sizes[w.rank]] = torch.cat([out[idx].reshape(-1) for idx in blocks[w.rank]])
    gathered = [torch.empty_like(flat) for _ in range(w.world_size)]
    dist.all_gather(gathered, flat)
    for r, (b, rank_shapes) in enumerate(zip(blocks, shapes, strict=True)):
        if r == w.rank:
            continue
        at = 0
        for idx, shape in zip(b, rank_shapes, strict=True):
            out[idx] = gathered[r][at:at + shape.numel()].view(shape)
            at += shape.numel()


def _on_cpu(idx: tuple) -> tuple:
    return tuple(i.cpu() if isinstance(i, Tensor) else i for i in idx)

"""Every node of the bilinear transformer really ablated (docs/spec.md §9, ablation): the oracle.

    actual(l, t, k) = f(x | z_l[t, k] := b) - f(x)

in the real network, every norm and every attention pattern recomputed at every position
(or, with `frozen_norm` / `frozen_attn`, held at their clean values: `actual_frozen_norm`,
`actual_frozen_attn`, `actual_frozen_both`). The perturbation is propagated from the clean
run (`_engine/sequence_plan.py`): layers before `l` and positions before `t` are reused,
only positions `t..p` are carried, one `(l, t)` at a time with a batch of sequences x a
batch of channels, as many as the memory budget allows. Nodes after `p` have no effect: 0.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from bilens.ablation._engine.backend import resolve_backend
from bilens.ablation._engine.sequence_plan import SequencePlan
from bilens.core import distributed
from bilens.core.errors import BilensError
from bilens.core.memory import DEFAULT_MEMORY, parse_memory
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.sequence import prepare_sequence

__all__ = ["sequence_ablation_effects", "feature_ablation_effects", "check_layers"]


def check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """The layers to ablate (None: all), each checked."""
    if layers is None:
        return list(range(n_layers))
    out = sorted(set(int(l) for l in layers))
    if not out or out[0] < 0 or out[-1] >= n_layers:
        raise BilensError(f"layers: expected indices in 0..{n_layers - 1}, got {list(layers)}")
    return out


def _chunks(model: BilinearTransformer, n_rows: int, carried: int, seq: int,
            memory: str | int, every_position: bool) -> tuple[int, int]:
    """(rows, channels) per batch: the working set of one `(l, t)` that carries `carried`
    of a sequence's `seq` positions within `memory` (with the logits' change at the target's
    position, or at every carried one), split into equal batches (128 rows that fit 37 at
    a time run as 4 batches of 32, not 37 + 37 + 37 + 17)."""
    cfg = model.config
    per_pair = (carried * (14 * cfg.d_model + 4 * cfg.d_hidden + 4 * cfg.n_heads * seq)
                + 3 * cfg.vocab_size * (carried if every_position else 1))
    units = max(1, parse_memory(memory) // (per_pair * torch.finfo(model.dtype).bits // 8))
    H = cfg.d_hidden
    if units >= H:
        return _even(n_rows, units // H), H
    return 1, _even(H, units)


def _even(n: int, most: int) -> int:
    """The size of the parts when `n` is split into the fewest parts of at most `most`, as
    evenly as they go (at least 1)."""
    parts = max(1, -(-n // most))
    return max(1, -(-n // parts))


def sequence_ablation_effects(
    model: BilinearTransformer,
    tokens: Int[Tensor, "batch seq"],
    *,
    target: object = "predicted",
    position: int | Tensor | None = None,
    baselines: object = "zero",
    labels: Int[Tensor, "batch seq"] | None = None,
    reference: Int[Tensor, "ref seq"] | None = None,
    frozen_norm: bool = False,
    frozen_attn: bool = False,
    layers: Sequence[int] | None = None,
    memory: str | int = DEFAULT_MEMORY,
    backend: str | None = None,
    precision: str | None = None,
    progress: bool = False,
) -> Float[Tensor, "batch layer seq d_hidden"]:
    """The effect on the target of really ablating every node `(l, t, k)`.

    Args:
        model: the transformer.
        tokens, target, position, baselines, labels, reference: as in
            `bilens.attribution.attribute_sequence` (the same target and baselines).
        frozen_norm: hold every norm's statistic at its clean value.
        frozen_attn: hold every attention pattern at its clean value.
        layers: layers to ablate (default all); the others are NaN.
        memory: bound on one batch's working set, e.g. `"4GiB"`.
        backend, precision: how the steps and the large products run, as for
            `bilens.ablation_effects` (`_engine/backend.py`): `"eager"` (default) or
            `"compile"` (the elementwise steps fused by `torch.compile`) with `"fp32"` or
            `"3xtf32"` cuBLAS products, or `"triton"` GEMMs (`"3xfp16"`, `"3xtf32"`);
            float32-level accurate; off CUDA eager float32.
        progress: a progress bar over the `(l, t)` groups.

    Returns:
        `actual [B, n_layers, T, d_hidden]`: 0 for nodes after `p`, NaN for layers not
        ablated.

    Example:
        >>> from bilens.core.config import TransformerConfig
        >>> model = BilinearTransformer(TransformerConfig(vocab_size=20, n_ctx=8, d_model=8,
        ...                             d_hidden=16, n_layers=2, n_heads=2)).double()
        >>> sequence_ablation_effects(model, torch.randint(20, (3, 6))).shape
        torch.Size([3, 2, 6, 16])
    """
    parse_memory(memory)
    chosen = check_layers(layers, model.config.n_layers)
    backend, precision = resolve_backend(backend, precision, model.device, model.dtype)
    tokens, run, tgt, b = prepare_sequence(model, tokens, target, position, baselines, labels,
                                           reference)
    return ablate_prepared(model, run, tgt, b, frozen_norm=frozen_norm, frozen_attn=frozen_attn,
                           layers=chosen, memory=memory, backend=backend, precision=precision,
                           progress=progress)


@torch.no_grad()
def ablate_prepared(model: BilinearTransformer, run, tgt, b: Tensor, *, frozen_norm: bool,
                    frozen_attn: bool, layers: list[int], memory: str | int,
                    progress: bool, precision: str = "fp32", backend: str = "eager",
                    grow_batches: bool = True) -> Tensor:
    """`sequence_ablation_effects` on a prepared batch (clean run, target, baselines).

    Every `(l, t)` batch is sized for `memory` and the `T - t` positions it carries, so
    that late positions run in fewer, larger batches (a GPU idles on small ones); with
    `grow_batches=False` every batch is sized as if it carried all `T` (on the H200 the two
    were within 1.3% of each other on all 128 sequences, 27.13 s against 27.47 s; on a CPU
    they change nothing measurable: docs/lm-verification.md, sessions 9 and 10).

    Under `torchrun` (an active process group) the batches of ablations are split over the
    ranks by estimated cost, as `bilens.ablation_effects` splits its chunks: each batch is
    the one-process batch, computed by exactly one rank, and every rank ends with the whole
    result (docs/distributed.md).
    """
    B, L, T, H = run.z.shape
    out = torch.full_like(run.z, float("nan"))
    out[:, layers] = 0.0
    plan = SequencePlan(model, run, tgt, b, frozen_norm=frozen_norm, frozen_attn=frozen_attn,
                        precision=precision, backend=backend)
    jobs = _jobs(plan, layers, B, T, H, lambda S: _chunks(
        model, B, S if grow_batches else T, T, memory, tgt.every_position))
    return _compute(plan, jobs, out, "node ablation", progress)


def _compute(plan: SequencePlan, jobs: list[tuple[int, int | None, slice, slice]],
             out: Tensor, desc: str, progress: bool) -> Tensor:
    """Every batch `(l, t, rows, ks)` of `jobs` into its block of `out` (`t` None: the
    features, `out [B, L, H]`), split over the ranks of a process group by estimated cost
    and gathered exactly (one process: all of them, in order), with a progress bar."""
    B, L, T, _ = plan.run.z.shape
    world = distributed.world()
    costs = [_cost(job, B, L, T) for job in jobs]
    shares = ([list(range(len(jobs)))] if not world.active
              else distributed.assign_lpt(costs, world.world_size))
    mine = shares[world.rank if world.active else 0]
    bar = None
    if progress and world.is_main:
        from tqdm import tqdm
        bar = tqdm(total=len(mine), desc=desc, unit="batch")
    try:
        with distributed.guard():        # a failure here reaches the other ranks' next agree
            for j in mine:
                l, t, rows, ks = jobs[j]
                out[_block(jobs[j])] = plan.effects(l, t, rows, ks)
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
    if world.active:
        distributed.share_blocks(out, [[_block(jobs[j]) for j in s] for s in shares])
    return out


def feature_ablation_effects(
    model: BilinearTransformer,
    tokens: Int[Tensor, "batch seq"],
    *,
    target: object = "predicted",
    position: int | Tensor | None = None,
    baselines: object = "zero",
    labels: Int[Tensor, "batch seq"] | None = None,
    reference: Int[Tensor, "ref seq"] | None = None,
    frozen_norm: bool = False,
    frozen_attn: bool = False,
    layers: Sequence[int] | None = None,
    memory: str | int = DEFAULT_MEMORY,
    backend: str | None = None,
    precision: str | None = None,
    progress: bool = False,
) -> Float[Tensor, "batch layer d_hidden"]:
    """The effect on the target of really ablating every feature: channel `(l, k)` at every
    position at once, `z_l[t, k] := b_l[t, k]` for all `t`, in the real network (or with
    norms / patterns held), propagated from the clean run as the node oracle is
    (`_engine/sequence_plan.py`): layers before `l` reused, every position `0..p` carried.

    Args: as `sequence_ablation_effects`.

    Returns:
        `[B, n_layers, d_hidden]`; NaN for layers not ablated. Its first-order prediction is
        the sum over positions of the node attributions (`predicted.sum(2)`).

    Example:
        >>> from bilens.core.config import TransformerConfig
        >>> model = BilinearTransformer(TransformerConfig(vocab_size=20, n_ctx=8, d_model=8,
        ...                             d_hidden=16, n_layers=2, n_heads=2)).double()
        >>> feature_ablation_effects(model, torch.randint(20, (3, 6))).shape
        torch.Size([3, 2, 16])
    """
    parse_memory(memory)
    chosen = check_layers(layers, model.config.n_layers)
    backend, precision = resolve_backend(backend, precision, model.device, model.dtype)
    tokens, run, tgt, b = prepare_sequence(model, tokens, target, position, baselines, labels,
                                           reference)
    return ablate_features_prepared(model, run, tgt, b, frozen_norm=frozen_norm,
                                    frozen_attn=frozen_attn, layers=chosen, memory=memory,
                                    backend=backend, precision=precision, progress=progress)


@torch.no_grad()
def ablate_features_prepared(model: BilinearTransformer, run, tgt, b: Tensor, *,
                             frozen_norm: bool, frozen_attn: bool, layers: list[int],
                             memory: str | int, progress: bool, precision: str = "fp32",
                             backend: str = "eager") -> Tensor:
    """`feature_ablation_effects` on a prepared batch: one batch per `(l, rows, channels)`,
    each carrying every position (`T` times fewer batches than for the nodes), split over
    the ranks of a process group as the nodes are."""
    B, L, T, H = run.z.shape
    out = run.z.new_full((B, L, H), float("nan"))
    plan = SequencePlan(model, run, tgt, b, frozen_norm=frozen_norm, frozen_attn=frozen_attn,
                        precision=precision, backend=backend)
    rows_per, ks_per = _chunks(model, B, T, T, memory, tgt.every_position)
    jobs = [(l, None, slice(r0, min(r0 + rows_per, B)), slice(k0, min(k0 + ks_per, H)))
            for l in layers for r0 in range(0, B, rows_per) for k0 in range(0, H, ks_per)]
    return _compute(plan, jobs, out, "feature ablation", progress)


def _jobs(plan: SequencePlan, layers: list[int], B: int, T: int, H: int,
          chunks: Callable[[int], tuple[int, int]]) -> list[tuple[int, int, slice, slice]]:
    """The batches of ablations, in one fixed order: `(l, t)`, then rows, then channels,
    skipping rows whose nodes `(l, t, .)` cannot reach the target; `chunks(S)`: the rows
    and channels per batch when `S` positions are carried (`T - t`, 1 in the last layer)."""
    jobs = []
    for l in layers:
        for t in range(T):
            rows_per, ks_per = chunks(1 if l == plan.L - 1 else T - t)
            for r0 in range(0, B, rows_per):
                rows = slice(r0, min(r0 + rows_per, B))
                if _reaches(plan, l, t, rows):
                    jobs += [(l, t, rows, slice(k0, min(k0 + ks_per, H)))
                             for k0 in range(0, H, ks_per)]
    return jobs


def _block(job: tuple[int, int | None, slice, slice]) -> tuple:
    """The index of a batch's block in the `[B, L, T, H]` result (features: `[B, L, H]`)."""
    l, t, rows, ks = job
    return (rows, l, ks) if t is None else (rows, l, t, ks)


def _cost(job: tuple[int, int | None, slice, slice], B: int, L: int, T: int) -> float:
    """Estimated cost of a batch: its ablations times the positions and layers its suffix
    carries (the last layer's closed form at the head counted as a fraction of a layer; a
    feature batch carries every position)."""
    l, t, rows, ks = job
    t = 0 if t is None else t
    n = len(range(*rows.indices(B))) * (ks.stop - ks.start)
    return n * (T - t) * (L - 1 - l + 0.1)


def _reaches(plan: SequencePlan, l: int, t: int, rows: slice) -> bool:
    """Whether any node `(l, t, .)` of these rows can change the target: `t <= p`, and for
    the last layer (which no attention reads again) `t == p` unless every position counts."""
    if plan.target.every_position:
        return True
    p = plan.target.position[rows]
    return bool((p == t).any()) if l == plan.L - 1 else bool((p >= t).any())

"""Node attribution captured once as a CUDA graph and replayed, for many batches of one shape.

At 128 sequences of the issue's model on an H200, one `attribute_sequence` call launches
some 480 kernels and the host's launching sets its pace: the GPU is busy for a third of
the call (docs/benchmarks.md). A CUDA graph records the launches once and replays them as
one. `CapturedAttribution(model, tokens, ...)` checks and resolves its arguments as
`attribute_sequence` does, runs the call twice on a side stream (Triton autotunes there),
and captures it for that batch's shape; each call then copies the new batch into the
graph's inputs, replays the graph and returns a copy of the prediction:

    >>> att = CapturedAttribution(model, tokens, target="next", backend="triton")  # doctest: +SKIP
    >>> predicted = att(more_tokens)           # same shape; [B, L, T, H]  # doctest: +SKIP

What it holds fixed: the batch's shape, the mode, the target spec, the baselines (resolved
once, `"mean"` over `reference` included) and the backend. What each call brings: the
tokens and what they resolve to (the next tokens, the positions). The whole batch is one
chunk (there is no `memory` bound: pick the batch to fit), and the weights are read where
they lie at each replay, so update them in place rather than by replacing the tensors.
The prediction equals `attribute_sequence`'s for the same batch (the same kernels, in the
same order; `tests/test_sequence_precision.py` holds it to that on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from typing import TypeVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from bilens.attribution.sequence import (
    DEFAULT_SEQUENCE_MODE,
    Prepared,
    _predict_chunk,
    check_sequence_mode,
    prepare_attribution,
)
from bilens.core.errors import BilensError
from bilens.core.memory import DEFAULT_MEMORY
from bilens.core.models.transformer import BilinearTransformer

T = TypeVar("T")


class CapturedAttribution:
    """`attribute_sequence` for one batch shape, captured as a CUDA graph (module docstring).

    Args:
        model: the transformer, on a CUDA device.
        tokens: a batch of the shape to capture (`[B, T]`, `[B, T + 1]` for `next`); its
            values warm the call up, and any batch of that shape can follow.
        target, position, baselines, mode, labels, reference, method, backend: as in
            `attribute_sequence`.
        warmup: calls run on a side stream before the capture (at least 1: the first one
            autotunes Triton's kernels and allocates what later calls reuse).
    """

    def __init__(self, model: BilinearTransformer, tokens: Int[Tensor, "batch seq"], *,
                 target: object = "predicted", position: int | Tensor | None = None,
                 baselines: object = "zero", mode: str = DEFAULT_SEQUENCE_MODE,
                 labels: Tensor | None = None, reference: Tensor | None = None,
                 method: str = "auto", backend: str | None = None, warmup: int = 2) -> None:
        _check_model(model)
        if warmup < 1:
            raise BilensError(f"warmup: expected at least 1 call before the capture, got "
                              f"{warmup}")
        self.model, self.mode, self._spec = model, check_sequence_mode(mode), target
        self._fixed = dict(baselines=baselines, reference=reference, method=method,
                           backend=backend)
        self._raw = tuple(torch.as_tensor(tokens).shape)          # as given, before any split
        self._labelled = labels is not None
        # the graph's own inputs: copies, since the checks hand back views of `tokens` on
        # its device, and every later call writes its batch here
        self._static = _owned(self._prepare(tokens, position, labels))
        self._fixed.update(baselines=self._static.baselines, reference=None)  # resolved once
        self._graph, self._out = self._capture(warmup)

    @property
    def shape(self) -> tuple[int, int]:
        """The token shape `[B, T]` the graph reads (after any next token is split off)."""
        return tuple(self._static.tokens.shape)

    def __call__(self, tokens: Int[Tensor, "batch seq"], *, position: int | Tensor | None = None,
                 labels: Tensor | None = None) -> Float[Tensor, "batch layer seq d_hidden"]:
        """The predicted effect of ablating every node of this batch (a new tensor)."""
        if tuple(torch.as_tensor(tokens).shape) != self._raw:
            raise BilensError(f"tokens: this CapturedAttribution was captured for tokens "
                              f"{list(self._raw)}, got {list(torch.as_tensor(tokens).shape)}; "
                              f"capture another for that shape")
        if (labels is not None) != self._labelled:
            fix = ("pass labels= in each call too" if self._labelled
                   else "leave labels= out, or capture another with them")
            raise BilensError(f"labels: this CapturedAttribution was captured "
                              f"{'with' if self._labelled else 'without'} labels; {fix}")
        new = self._prepare(tokens, position, labels)
        _refill(self._static.tokens, new.tokens, "tokens")
        _refill(self._static.target, new.target, "target")
        self._graph.replay()
        return self._out.clone()

    def _prepare(self, tokens: Tensor, position: object, labels: Tensor | None) -> Prepared:
        f = self._fixed
        return prepare_attribution(self.model, tokens, self._spec, position, f["baselines"],
                                   (self.mode,), labels, f["reference"], DEFAULT_MEMORY,
                                   f["method"], f["backend"])

    def _chunk(self) -> Tensor:
        p = self._static
        return _predict_chunk(self.model, p.tokens, self._spec, p.target, p.baselines, p.modes,
                              False, p.method, p.backend).predicted[self.mode]

    def _capture(self, warmup: int) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """Warm up and record one call, the model in eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            return capture(self._chunk, self.model.device, warmup,
                           "this attribution", "call attribute_sequence instead")
        finally:
            self.model.train(was_training)


def capture(fn: Callable[[], T], device: torch.device, warmup: int = 2,
            what: str = "this call", instead: str = "run it uncaptured"
            ) -> tuple[torch.cuda.CUDAGraph, T]:
    """`fn` run `warmup` times on a side stream (Triton autotunes, the caching allocator
    settles), then recorded once as a CUDA graph: `(graph, what fn returned)`, the latter
    rewritten in place by each `graph.replay()`. A call that cannot be recorded (one that
    reads a GPU value on the host, say) fails in one line."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            out = fn()
    except RuntimeError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BilensError(f"{what} could not be captured as a CUDA graph ({first}); "
                          f"{instead}") from err
    return graph, out


def _check_model(model: object) -> None:
    """A `BilinearTransformer` on a CUDA device, or one line that says what to call."""
    if not isinstance(model, BilinearTransformer):
        raise BilensError(f"CapturedAttribution: needs a BilinearTransformer on a CUDA device, "
                          f"got a {type(model).__name__}; for an MLP network call attribute")
    if model.device.type != "cuda":
        raise BilensError(f"CapturedAttribution: needs a BilinearTransformer on a CUDA device, "
                          f"got one on {model.device}; call attribute_sequence instead")


def _owned(prepared: Prepared) -> Prepared:
    """`prepared` with its tokens and its target's tensors copied (a dataclass walk)."""
    def own(x: object) -> object:
        if isinstance(x, Tensor):
            return x.clone()
        if is_dataclass(x) and not isinstance(x, type):
            return replace(x, **{f.name: own(getattr(x, f.name)) for f in fields(x)
                                 if f.init})
        return x
    return prepared._replace(tokens=own(prepared.tokens), target=own(prepared.target))


def _refill(static: object, new: object, name: str) -> None:
    """Copy `new`'s tensors into `static`'s, field by field (dataclasses), checking that
    everything else (shapes, specs, which fields are None) is the same."""
    if isinstance(static, Tensor) and isinstance(new, Tensor):
        if static.shape != new.shape:
            raise BilensError(f"{name}: captured with shape {list(static.shape)}, got "
                              f"{list(new.shape)}; capture another for that shape")
        static.copy_(new)
    elif is_dataclass(static) and type(static) is type(new):
        for f in fields(static):
            _refill(getattr(static, f.name), getattr(new, f.name), f"{name}.{f.name}")
    elif static is not new and static != new:
        raise BilensError(f"{name}: captured with {static!r}, got {new!r}; capture another "
                          f"for it")

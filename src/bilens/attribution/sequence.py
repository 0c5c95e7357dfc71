"""Every node's predicted ablation effect in the bilinear transformer (docs/spec.md §9,
attribution).

A node is `(l, t, k)`, entry `k` of `z_l` at position `t`; the target is read at a position
`p` per sequence. From one forward and one backward pass per mode:

    predicted(l, t, k) = (b - z_l[t, k]) * d f / d z_l[t, k]    under a linearization

- `frozen`: every norm's statistic `s` and every attention pattern held at its clean value
  (RelP's and circuit-tracer's linearization); LayerNorm's centring stays, it is linear.
- `frozen-norm`: the norms held, the attention patterns live (the seed's proposal).
- `live`: the true gradient (attribution patching).
- `renorm`: `live`, with the first norm the ablation reaches recomputed exactly in closed
  form (`attribution.renorm`'s formula, per position): post-norm, layer `l`'s MLP norm at
  `t` (every path runs through it, so `predicted = g_N . (N(r + c D_k) - N(r))`); pre-norm,
  the next norm at `t` (layer `l+1`'s attention norm, or the final norm after the last
  layer), whose path's live slope is swapped for the exact change:
  `predicted = c g_live - c slope_path + g_N . (N(r + c D_k) - N(r))`.

The gradients come from the backward written out (`attribution.sequence_backward`,
`method="explicit"`: one clean forward with every intermediate, then one backward per
graph) or from autograd (`method="autograd"`), the two held to 1e-10 in float64; `"auto"`
takes the explicit one where several graphs share its forward. Through autograd, they are
taken at the `z` (and, for `renorm`, the norm outputs) that `BilinearTransformer.run`
shows its `Intervention.tap`: no zero offsets to allocate and add. The held quantities are
that forward's own statistics and patterns, detached inside it (`Intervention.detach_scale`,
`detach_pattern`: a clean run's values, constants to autograd), so the same forward is also
the clean run: its `z` gives `b - z`, its norms' inputs and statistics `renorm`'s closed
form, and its logits at `p` (the head runs there alone; at every position for
`mean-logprob`) resolve the target. No clean run comes first: one mode costs one forward and
one backward (docs/benchmarks.md, "Node attribution of the transformer"). Nodes after `p`
cannot reach the target: their predictions are exactly 0.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from bilens.attribution.backward import METHODS
from bilens.attribution.sequence_backward import gradients_explicit
from bilens.attribution.sequence_renorm import first_norms, renorm, resolve_renorm_backend
from bilens.core.errors import BilensError
from bilens.core.memory import DEFAULT_MEMORY, parse_memory
from bilens.core.models.intervention import Intervention
from bilens.core.models.transformer import BilinearTransformer, TransformerRun
from bilens.core.sequence import (
    SequenceTarget,
    check_sequence_inputs,
    node_mask,
    resolve_sequence_baseline,
    resolve_sequence_target,
)
from bilens.core.targets import Target, reads_logits, resolve_target

__all__ = ["attribute_sequence", "attribute_sequence_modes", "SequenceAttribution",
           "SEQUENCE_MODES", "check_sequence_mode", "gradients_sequence"]

SEQUENCE_MODES = ("frozen", "frozen-norm", "live", "renorm")
DEFAULT_SEQUENCE_MODE = "renorm"


def check_sequence_mode(mode: object, name: str = "mode") -> str:
    """Return `mode` if it is a sequence-model attribution mode, else a `BilensError`."""
    if not isinstance(mode, str) or mode not in SEQUENCE_MODES:
        raise BilensError(f"{name}: {mode!r} is not a sequence-model attribution mode; "
                          f"expected one of {', '.join(SEQUENCE_MODES)}")
    return mode


@dataclass
class SequenceAttribution:
    """What `attribute_sequence_modes` computed.

    Attributes:
        predicted: mode -> `[B, n_layers, T, d_hidden]`.
        run: the clean `TransformerRun` (None with `keep_run=False`).
        target: the resolved `SequenceTarget`.
        baselines: `b`, `[B, n_layers, T, d_hidden]`.
        tokens: what the model read, `[B, T]`.
    """

    predicted: dict[str, Float[Tensor, "batch layer seq d_hidden"]]
    run: TransformerRun | None
    target: SequenceTarget
    baselines: Float[Tensor, "batch layer seq d_hidden"]
    tokens: Int[Tensor, "batch seq"]


def batch_for(model: BilinearTransformer, n: int, seq: int, memory: str | int,
              all_logits: bool = True) -> int:
    """Sequences per chunk so that one chunk's run and its autograd graph fit `memory`; the
    logits are counted at every position only where they are computed there (a target read
    at every position, `mean-logprob`, or a clean run kept with all its fields), else once
    per sequence (the head runs at `p` alone). The count is about 2.5x the peak of live
    tensors at the issue's shape (30.8 MB a sequence for `next` against 12-13 MB,
    `benchmarks/lm_attribution_memory.py`)."""
    cfg = model.config
    per_pos = cfg.n_layers * (12 * cfg.d_model + 6 * cfg.d_hidden + 3 * cfg.n_heads * seq)
    logits = 3 * cfg.vocab_size * (seq if all_logits else 1)
    per_seq = 3 * (seq * per_pos + logits) * torch.finfo(model.dtype).bits // 8
    return max(1, min(n, parse_memory(memory) // per_seq))


def attribute_sequence(
    model: BilinearTransformer,
    tokens: Int[Tensor, "batch seq"],
    *,
    target: object = "predicted",
    position: int | Tensor | None = None,
    baselines: object = "zero",
    mode: str = DEFAULT_SEQUENCE_MODE,
    labels: Int[Tensor, "batch seq"] | None = None,
    reference: Int[Tensor, "ref seq"] | None = None,
    memory: str | int = DEFAULT_MEMORY,
    method: str = "auto",
    backend: str | None = None,
) -> Float[Tensor, "batch layer seq d_hidden"]:
    """Predict the effect on the target of ablating every node `(l, t, k)`.

    Args:
        model: the transformer.
        tokens: `[B, T]` token ids (`[B, T + 1]` for `next` / `mean-logprob` without
            `labels`: the last token is only read as the next token).
        target: `"predicted"`, `"next"`, `"mean-logprob"`, `"class:C"`, `"diff:C1,C2"`, an int,
            an int tensor `[B]`, a direction `[vocab]` / `[B, vocab]`, or a `SequenceTarget`.
        position: `p`, where the target is read: None (the last), an int, or `[B]`.
        baselines: `"zero"`, `"mean"` (over `reference` token sequences), or `z` values
            `[L, H]`, `[L, T, H]`, `[B, L, T, H]`.
        mode: `"renorm"` (default), `"live"`, `"frozen-norm"` or `"frozen"`.
        labels: the next tokens `x_{t+1}` `[B, T]` (instead of the extra token).
        reference: token sequences for the `"mean"` baseline.
        memory: bound on one chunk's run and backward, e.g. `"4GiB"`.
        method: `"explicit"` (the backward written out, `attribution.sequence_backward`:
            one clean forward serves every mode), `"autograd"` (one autograd forward and
            backward per mode), or `"auto"`: explicit where one forward serves several
            graphs (`attribute_sequence_modes`), autograd for one: the faster of the two in
            each case on a CPU (docs/benchmarks.md, "The written-out backward").
        backend: how `renorm`'s closed form runs: `"eager"` (None, the default: torch
            operations) or `"triton"` (one Triton kernel per layer, its products 3xTF32:
            float32 accuracy; it needs CUDA, a float32 model and Triton, else it runs eager
            with a warning). The other modes are one backward either way.

    Returns:
        `predicted [B, n_layers, T, d_hidden]`, exactly 0 for nodes after `p`.

    Example:
        >>> from bilens.core.config import TransformerConfig
        >>> model = BilinearTransformer(TransformerConfig(vocab_size=20, n_ctx=8, d_model=8,
        ...                             d_hidden=16, n_layers=2, n_heads=2))
        >>> attribute_sequence(model, torch.randint(20, (3, 6)), mode="frozen").shape
        torch.Size([3, 2, 6, 16])
    """
    check_sequence_mode(mode)
    return attribute_sequence_modes(model, tokens, target=target, position=position,
                                    baselines=baselines, modes=(mode,), labels=labels,
                                    reference=reference, memory=memory,
                                    keep_run=False, method=method,
                                    backend=backend).predicted[mode]


def attribute_sequence_modes(
    model: BilinearTransformer,
    tokens: Int[Tensor, "batch seq"],
    *,
    target: object = "predicted",
    position: int | Tensor | None = None,
    baselines: object = "zero",
    modes: Sequence[str] = SEQUENCE_MODES,
    labels: Int[Tensor, "batch seq"] | None = None,
    reference: Int[Tensor, "ref seq"] | None = None,
    memory: str | int = DEFAULT_MEMORY,
    keep_run: bool = True,
    method: str = "auto",
    backend: str | None = None,
) -> SequenceAttribution:
    """`attribute_sequence` for several modes; arguments as there.

    Each chunk costs, per graph the modes need (`frozen`, `frozen-norm`, and `live` which
    also serves `renorm`), one written-out backward after one shared clean forward
    (`method="explicit"`), or one autograd forward and backward, the first of them also
    the clean run (`"autograd"`); either way the target is resolved on the clean logits.
    """
    tokens, tgt, b, modes, method, backend = prepare_attribution(
        model, tokens, target, position, baselines, modes, labels, reference, memory, method,
        backend)
    B = tokens.shape[0]
    chunk = batch_for(model, B, tokens.shape[1], memory, tgt.every_position or keep_run)
    was_training = model.training
    if was_training:                    # only then: walking every module there and back costs
        model.eval()                    # ~70 us, 5% of the small benchmark model's forward
    try:
        parts = [_predict_chunk(model, tokens[i:i + chunk], target,
                                tgt.select(slice(i, i + chunk)), b[i:i + chunk], modes, keep_run,
                                method, backend)
                 for i in range(0, B, chunk)]
    finally:
        if was_training:
            model.train()
    predicted = {m: torch.cat([p.predicted[m] for p in parts]) if len(parts) > 1
                 else parts[0].predicted[m] for m in modes}
    if reads_logits(target):                         # resolved on each chunk's own logits
        direction = torch.cat([p.target.target.direction for p in parts])
        tgt = SequenceTarget(tgt.position, Target(direction=direction, spec=tgt.spec), None,
                             tgt.spec)
    run = _cat_runs([p.run for p in parts]) if keep_run else None
    return SequenceAttribution(predicted, run, tgt, b, tokens)


class Prepared(NamedTuple):
    """What `_predict_chunk` reads, checked and resolved: the tokens read `[B, T]`, the
    target, the baselines `b` (broadcastable to `z`), the modes, the method and the backend."""

    tokens: Tensor
    target: SequenceTarget
    baselines: Tensor
    modes: tuple[str, ...]
    method: str
    backend: str


def prepare_attribution(model: BilinearTransformer, tokens: Tensor, target: object,
                        position: object, baselines: object, modes: Sequence[str],
                        labels: Tensor | None, reference: Tensor | None, memory: str | int,
                        method: str, backend: str | None) -> Prepared:
    """`attribute_sequence_modes`'s arguments checked (one line each where they are wrong)
    and resolved for this batch."""
    if isinstance(modes, str) or not modes:
        raise BilensError(f"modes: expected a non-empty sequence of {list(SEQUENCE_MODES)}, "
                          f"got {modes!r}")
    modes = tuple(dict.fromkeys(check_sequence_mode(m, "modes") for m in modes))
    if method not in ("auto", *METHODS):
        raise BilensError(f"method: expected one of {['auto', *METHODS]}, got {method!r}; "
                          f"'explicit' is the written-out backward, 'autograd' checks it")
    if method == "auto":
        method = "explicit" if len(_graphs(modes)) > 1 else "autograd"
    parse_memory(memory)
    backend = resolve_renorm_backend(backend, model.device, model.dtype,
                                     used="renorm" in modes)
    tokens, labels = check_sequence_inputs(model, tokens, target, labels, reference)
    B, T = tokens.shape
    cfg = model.config
    blank = torch.zeros((), dtype=model.dtype, device=model.device)    # shapes, no values
    tgt = resolve_sequence_target(target, blank.expand(B, T, cfg.vocab_size), position,
                                  None if labels is None else torch.as_tensor(labels))
    b = resolve_sequence_baseline(baselines, model,
                                  blank.expand(B, cfg.n_layers, T, cfg.d_hidden), reference)
    return Prepared(tokens, tgt, b, modes, method, backend)


def _cat_runs(runs: list[TransformerRun]) -> TransformerRun:
    """The chunks' clean runs as one, along the batch."""
    if len(runs) == 1:
        return runs[0]
    return TransformerRun(**{f.name: torch.cat([getattr(r, f.name) for r in runs])
                             for f in fields(TransformerRun)})


def _graphs(modes: tuple[str, ...]) -> tuple[str, ...]:
    """The autograd graphs the modes need, each once: `live`'s also serves `renorm`."""
    return tuple(dict.fromkeys("live" if m == "renorm" else m for m in modes))


def _predict_chunk(model: BilinearTransformer, tokens: Tensor, spec: object, tgt: SequenceTarget,
                   b: Tensor, modes: tuple[str, ...], keep_run: bool, method: str,
                   backend: str) -> SequenceAttribution:
    """One chunk: `explicit`, one clean forward (every intermediate; the logits at every
    position only for `keep_run`) and one written-out backward per graph; `autograd`, per
    graph one autograd forward (the first is also the clean run) and one backward. Either
    way the target is resolved on the clean logits; `renorm` adds its closed form."""
    keep = node_mask(tgt.position, tokens.shape[1])
    out: dict[str, Tensor] = {}
    run = c = stacked = None
    graphs = _graphs(modes)
    if method == "explicit":
        with torch.no_grad():
            run = model.run(tokens, check=False, logits=keep_run)
        if not tgt.every_position:
            rows = torch.arange(tokens.shape[0], device=tokens.device)
            tgt = _resolved(spec, tgt, model.head(run.final[rows, tgt.position]))
    for n, graph in enumerate(graphs):
        first = "renorm" in modes and graph == "live"           # the norms renorm recomputes
        norms = first_norms(model) if first else ()
        if method == "explicit":
            fwd = run
            with torch.no_grad():
                stacked, g_norm = gradients_explicit(model, run, tgt, graph, norms)
            g_z = stacked.unbind(1)                              # [B, T, H] per layer
        else:
            fwd, tgt, g_z, g_norm = _one_pass(model, tokens, spec, tgt, graph, norms,
                                              intermediates=keep_run and run is None)
            run = fwd if run is None else run
        if c is None:             # b - z, in the clean run's own z where it is not kept (the
            own = not keep_run    # backward written out reads only that z's shape)
            c = torch.sub(b, run.z, out=run.z if own else None)         # [B, L, T, H]
        todo = [m for m in (("renorm", "live") if graph == "live" else (graph,)) if m in modes]
        for mode in todo:                                    # renorm reads g_z before live
            last = own and n == len(graphs) - 1 and mode == todo[-1]    # c's last reader
            into = c if last else None
            p = (renorm(model, fwd, tgt, c, g_z, g_norm, backend, out=into) if mode == "renorm"
                 else _times(g_z, c, stacked if into is None else into))
            out[mode] = p.masked_fill_(~keep, 0.0)                      # nodes after p: 0
    return SequenceAttribution(out, run if keep_run else None, tgt, b, tokens)


def _times(g_z: Sequence[Tensor], c: Tensor, out: Tensor | None) -> Tensor:
    """`c * d f / d z` `[B, L, T, H]` from the gradient per layer, into `out` where given
    (the gradients' own stack, or `c`)."""
    out = torch.empty_like(c) if out is None else out
    for l, g in enumerate(g_z):
        torch.mul(g, c[:, l], out=out[:, l])
    return out


def _resolved(spec: object, tgt: SequenceTarget, logits: Tensor) -> SequenceTarget:
    """`tgt` with its target resolved on the clean run's logits at `p` `[B, vocab]`, where
    the spec reads them (`predicted`, ...); else `tgt` itself."""
    if not reads_logits(spec):
        return tgt
    return SequenceTarget(tgt.position, resolve_target(spec, logits.detach()), None, tgt.spec)


def _one_pass(model: BilinearTransformer, tokens: Tensor, spec: object, tgt: SequenceTarget,
              graph: str, norm_outputs: tuple[int, ...], intermediates: bool
              ) -> tuple[TransformerRun, SequenceTarget, list[Tensor], dict[int, Tensor]]:
    """One autograd forward under `graph`'s linearization (its own statistics and patterns
    detached, `Intervention.detach_*`), the target read from its logits, one backward.

    Returns the run (detached; every field with `intermediates`), the target (resolved on
    these logits when the spec reads them), `d f / d z_l` `[B, T, H]` per layer and
    `d f / d N_i(r)` `[B, T, d_model]` at the output of each norm `i` of `norm_outputs`,
    each taken at the tensor the run used (`Intervention.tap`).
    """
    cfg = model.config
    B = tokens.shape[0]
    taps: dict[tuple[str, int], Tensor] = {}

    def tap(kind: str, index: int, t: Tensor) -> None:        # every z, the norms asked for
        if kind == "z" or index in norm_outputs:
            if not t.requires_grad:                            # weights held: the graph starts here
                t.requires_grad_()
            taps[kind, index] = t

    with torch.enable_grad():
        out = model.run(tokens, Intervention(tap=tap, **HOLD[graph]), check=False,
                        intermediates=intermediates)
        if tgt.every_position:                                         # every position's logits
            f = tgt(model.head(out.final))
        else:                                                          # only p's: [B, vocab]
            logits = model.head(out.final[torch.arange(B, device=tokens.device), tgt.position])
            tgt = _resolved(spec, tgt, logits)                         # this run is the clean one
            f = tgt.target(logits)
        wrt = [taps["z", l] for l in range(cfg.n_layers)] + [taps["norm", i] for i in norm_outputs]
        grads = torch.autograd.grad(f.sum(), wrt, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads, strict=True)]
    g_norm = dict(zip(norm_outputs, grads[cfg.n_layers:], strict=True))   # zero: not reached
    run = TransformerRun(**{f.name: None if getattr(out, f.name) is None
                            else getattr(out, f.name).detach() for f in fields(TransformerRun)})
    return run, tgt, grads[:cfg.n_layers], g_norm


HOLD = {"frozen": dict(detach_scale=True, detach_pattern=True),      # what each graph holds
        "frozen-norm": dict(detach_scale=True), "live": {}}


def gradients_sequence(
    model: BilinearTransformer, tokens: Tensor, run: TransformerRun, tgt: SequenceTarget,
    mode: str, norm_outputs: bool = False,
) -> tuple[Float[Tensor, "batch layer seq d_hidden"], Tensor | None]:
    """`d f / d z` `[B, L, T, H]` under `mode` (`frozen`, `frozen-norm`, `live`) with the
    statistics and patterns of a given `run` held, and with `norm_outputs` also
    `d f / d N_i(r)` at every norm's output `[B, T, n_norms, d_model]`. (The attribution
    itself holds its own forward's statistics instead: `Intervention.detach_scale`.)"""
    frozen = {"frozen": dict(scale=run.scale.detach(), pattern=run.pattern.detach()),
              "frozen-norm": dict(scale=run.scale.detach()), "live": {}}[mode]
    with torch.enable_grad():
        z_off = torch.zeros_like(run.z, requires_grad=True)
        wrt = [z_off]
        n_off = None
        if norm_outputs:
            n_off = run.resid.new_zeros(run.resid.shape, requires_grad=True)
            wrt.append(n_off)
        out = model.run(tokens, Intervention(**frozen, z_offset=z_off, norm_offset=n_off),
                        check=False)
        grads = torch.autograd.grad(tgt(out.logits).sum(), wrt, allow_unused=True)
    g_norm = None if not norm_outputs else (torch.zeros_like(n_off) if grads[1] is None
                                            else grads[1])
    return grads[0].detach(), g_norm

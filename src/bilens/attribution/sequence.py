"""Every node's predicted ablation effect in the bilinear transformer (docs/spec.md §9,
attribution).

A node is `(l, t, k)`, entry `k` of `z_l` at position `t`; the target is read at a position
`p` per sequence. From one clean forward and one backward pass:

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

The gradients come from autograd through `BilinearTransformer.run` with a zero
`z_offset` (and `norm_offset` for `renorm`) that requires grad, the frozen quantities
passed detached in the `Intervention`. Nodes after `p` cannot reach the target: their
predictions are exactly 0.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from bilens.attribution.renorm import _norm_change
from bilens.core.errors import BilensError
from bilens.core.memory import DEFAULT_MEMORY, parse_memory
from bilens.core.models.intervention import Intervention
from bilens.core.models.transformer import BilinearTransformer, TransformerRun
from bilens.core.sequence import SequenceTarget, node_mask, prepare_sequence

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


def batch_for(model: BilinearTransformer, n: int, seq: int, memory: str | int) -> int:
    """Sequences per chunk so that one chunk's run and its autograd graph fit `memory`."""
    cfg = model.config
    per_pos = cfg.n_layers * (12 * cfg.d_model + 6 * cfg.d_hidden + 3 * cfg.n_heads * seq)
    per_seq = 3 * seq * (per_pos + 3 * cfg.vocab_size) * torch.finfo(model.dtype).bits // 8
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
                                    keep_run=False).predicted[mode]


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
) -> SequenceAttribution:
    """`attribute_sequence` for several modes from one clean run; arguments as there."""
    if isinstance(modes, str) or not modes:
        raise BilensError(f"modes: expected a non-empty sequence of {list(SEQUENCE_MODES)}, "
                          f"got {modes!r}")
    modes = tuple(dict.fromkeys(check_sequence_mode(m, "modes") for m in modes))
    parse_memory(memory)
    tokens, run, tgt, b = prepare_sequence(model, tokens, target, position, baselines, labels,
                                           reference)
    B, T = tokens.shape
    chunk = batch_for(model, B, T, memory)
    was_training = model.training
    model.eval()
    try:
        parts = [_predict_chunk(model, tokens[i:i + chunk], tgt.select(slice(i, i + chunk)),
                                b[i:i + chunk], modes, run if chunk >= B else None)
                 for i in range(0, B, chunk)]
    finally:
        model.train(was_training)
    predicted = {m: torch.cat([p[m] for p in parts]) for m in modes}
    return SequenceAttribution(predicted, run if keep_run else None, tgt, b, tokens)


def _predict_chunk(model: BilinearTransformer, tokens: Tensor, tgt: SequenceTarget, b: Tensor,
                   modes: tuple[str, ...], run: TransformerRun | None = None
                   ) -> dict[str, Tensor]:
    if run is None:                                  # one chunk of several: its clean run
        with torch.no_grad():
            run = model.run(tokens, check=False)
    c = b - run.z                                                        # b - z  [B, L, T, H]
    keep = node_mask(tgt.position, tokens.shape[1])
    out = {}
    for mode in modes:
        if mode == "renorm":
            p = _renorm(model, tokens, run, tgt, c)
        else:
            p = c * gradients_sequence(model, tokens, run, tgt, mode)[0]
        out[mode] = torch.where(keep, p, torch.zeros_like(p))
    return out


def gradients_sequence(
    model: BilinearTransformer, tokens: Tensor, run: TransformerRun, tgt: SequenceTarget,
    mode: str, norm_outputs: bool = False,
) -> tuple[Float[Tensor, "batch layer seq d_hidden"], Tensor | None]:
    """`d f / d z` `[B, L, T, H]` under `mode` (`frozen`, `frozen-norm`, `live`), and with
    `norm_outputs` also `d f / d N_i(r)` at every norm's output `[B, T, n_norms, d_model]`."""
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


def _renorm(model: BilinearTransformer, tokens: Tensor, run: TransformerRun,
            tgt: SequenceTarget, c: Tensor) -> Tensor:
    """`renorm` (module docstring): the first norm each node reaches, exactly, per position."""
    cfg = model.config
    g_live, g_norm = gradients_sequence(model, tokens, run, tgt, "live", norm_outputs=True)
    flat = SimpleNamespace(resid=run.resid.flatten(0, 1), scale=run.scale.flatten(0, 1),
                           mean=run.mean.flatten(0, 1))                 # [B*T, n_norms, ...]
    B, L, T, H = c.shape
    out = []
    with torch.no_grad():
        for l, layer in enumerate(model.layers):
            c_l, g_l = c[:, l].flatten(0, 1), g_live[:, l].flatten(0, 1)  # [B*T, H]
            if cfg.norm_position == "post":
                i = 2 * l + 1                                    # every path runs through it
                exact, _ = _norm_change(model, flat, i, g_norm[:, :, i].flatten(0, 1),
                                        layer.D, c_l, slope=g_l)
                out.append(exact.view(B, T, H))
                continue
            i = 2 * (l + 1)                    # the next norm: layer l+1's attention, or final
            exact, slope = _norm_change(model, flat, i, g_norm[:, :, i].flatten(0, 1), layer.D,
                                        c_l)
            out.append((c_l * (g_l - slope) + exact).view(B, T, H))
    return torch.stack(out, 1)

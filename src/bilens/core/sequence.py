"""Targets and baselines of the sequence model (docs/spec.md §9): §2 and §3 with a position.

A `SequenceTarget` is the scalar `f` per sequence, read off the logits at a target position
`p` (default the last):

- `"predicted"`, `"class:C"`, `"diff:C1,C2"`, an int, an int tensor `[B]`, a direction
  `[vocab]` or `[B, vocab]` (`core.targets`), all read from `logits_p`;
- `"next"`: the log-probability of the true next token `x_{p+1}` (the data carries one token
  more than the model reads: `split_next_tokens`);
- `"mean-logprob"`: the mean over every position `t` of `log p(x_{t+1})` (the negative loss);
  its position is the last, and every position's logits count.

It is resolved once on the clean run and then fixed, as in `core.targets`.

Example:
    >>> logits = torch.zeros(2, 5, 7)
    >>> t = resolve_sequence_target("class:3", logits, position=2)
    >>> t.position.tolist(), t(logits).tolist()
    ([2, 2], [0.0, 0.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from bilens.core.errors import BilensError
from bilens.core.models.transformer import BilinearTransformer, TransformerRun, check_tokens
from bilens.core.targets import Target, resolve_target

SEQUENCE_TARGET_HELP = ("predicted | next | mean-logprob | class:C | diff:C1,C2 | int | "
                        "int tensor [B] | float direction [vocab] or [B, vocab]")
NEEDS_NEXT = ("next", "mean-logprob")
SEQUENCE_BASELINE_HELP = ("'zero' | 'mean' (over reference=... token sequences) | a tensor "
                          "[n_layers, d_hidden], [n_layers, seq, d_hidden] or "
                          "[batch, n_layers, seq, d_hidden] of z values")


@dataclass
class SequenceTarget:
    """A resolved sequence target: `target` read at `position`, or `mean-logprob`.

    Attributes:
        position: `p` per sequence `[B]` (the last position for `mean-logprob`).
        target: the §2 target on `logits_p` (None for `mean-logprob`).
        next_tokens: `x_{t+1}` per position `[B, T]` (`mean-logprob` only).
        spec: the spec it came from.
    """

    position: Int[Tensor, " batch"]
    target: Target | None = None
    next_tokens: Int[Tensor, "batch seq"] | None = None
    spec: str = ""

    @property
    def every_position(self) -> bool:
        """True for `mean-logprob`, which reads the logits of every position."""
        return self.target is None

    def __call__(self, logits: Float[Tensor, "batch seq vocab"]) -> Float[Tensor, " batch"]:
        """`f` of each sequence from its logits `[B, T, vocab]`."""
        if self.target is None:
            logp = logits.log_softmax(-1).gather(-1, self.next_tokens[..., None]).squeeze(-1)
            return logp.mean(-1)
        rows = torch.arange(logits.shape[0], device=logits.device)
        return self.target(logits[rows, self.position])

    def select(self, index: Tensor | slice) -> SequenceTarget:
        """The target of a sub-batch."""
        return SequenceTarget(self.position[index],
                              None if self.target is None else self.target.select(index),
                              None if self.next_tokens is None else self.next_tokens[index],
                              self.spec)

    def to_tensors(self) -> dict[str, Tensor]:
        """docs/spec.md §9: `target_position [N]` and `target [N, vocab]` or `label [N]`
        (`label [N, T]`, the next token at every position, for `mean-logprob`)."""
        out = {"target_position": self.position}
        if self.target is None:
            return {**out, "label": self.next_tokens}
        return {**out, **self.target.to_tensors()}


def split_next_tokens(tokens: Int[Tensor, "batch seq_plus_1"], target: object
                      ) -> tuple[Tensor, Tensor | None]:
    """`(what the model reads, the next tokens)`: for `next` and `mean-logprob` the data
    carries one token more, `tokens[:, :-1]` is read and `tokens[:, 1:]` is `x_{t+1}`;
    for any other target the tokens are read whole and there are no next tokens."""
    if isinstance(target, str) and target in NEEDS_NEXT:
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.shape[1] < 2:
            raise BilensError(f"tokens: target={target!r} reads the true next token, so the "
                              f"data carries one token more than the model reads; expected "
                              f"[batch, seq + 1] with seq >= 1, got "
                              f"{list(getattr(tokens, 'shape', []))}")
        return tokens[:, :-1], tokens[:, 1:]
    return tokens, None


def _positions(position: object, batch: int, seq: int, device: torch.device) -> Tensor:
    """`p` per sequence `[B]` from None (the last), an int (negative counts from the end)
    or an int tensor `[B]`; a `BilensError` for one outside the sequence."""
    if position is None:
        return torch.full((batch,), seq - 1, dtype=torch.long, device=device)
    if isinstance(position, bool) or not isinstance(position, (int, Tensor, list, tuple)):
        raise BilensError(f"position: expected None, an int or an int tensor [batch], got "
                          f"{type(position).__name__}")
    p = torch.as_tensor(position, device=device)
    if p.is_floating_point():
        raise BilensError("position: expected integer positions, got floats")
    p = p.long().flatten().expand(batch) if p.numel() == 1 else p.long().flatten()
    if p.shape[0] != batch:
        raise BilensError(f"position: expected one position per sequence ({batch}), got "
                          f"{p.shape[0]}")
    p = torch.where(p < 0, p + seq, p)
    if p.min() < 0 or p.max() >= seq:
        bad = int(p.max()) if p.max() >= seq else int(p.min())
        raise BilensError(f"position: target position {bad} is beyond the sequence of length "
                          f"{seq}; use 0..{seq - 1} (or -1 for the last)")
    return p.clone()


def resolve_sequence_target(
    spec: object,
    logits: Float[Tensor, "batch seq vocab"],
    position: int | Tensor | None = None,
    next_tokens: Int[Tensor, "batch seq"] | None = None,
) -> SequenceTarget:
    """Turn a target spec and a position into a `SequenceTarget` for this batch.

    Args:
        spec: see the module docstring (or a resolved `SequenceTarget`, passed through).
        logits: the clean logits `[B, T, vocab]` (`predicted` reads them at `p`).
        position: `p`: None (the last), an int (negative from the end) or `[B]`.
        next_tokens: `x_{t+1}` `[B, T]`, needed by `next` and `mean-logprob`.

    Returns:
        The resolved `SequenceTarget`.
    """
    batch, seq, _ = logits.shape
    if isinstance(spec, SequenceTarget):
        if spec.position.shape[0] != batch:
            raise BilensError(f"target: a resolved SequenceTarget holds {spec.position.shape[0]} "
                              f"rows for {batch} sequences; resolve it on this batch")
        return spec
    p = _positions(position, batch, seq, logits.device)
    if isinstance(spec, str) and spec in NEEDS_NEXT:
        if next_tokens is None or tuple(next_tokens.shape) != (batch, seq):
            raise BilensError(f"target={spec!r} needs the true next tokens [{batch}, {seq}]; "
                              f"pass tokens with one token more (bilens.core.sequence."
                              f"split_next_tokens) or labels=...")
        nxt = next_tokens.to(logits.device).long()
        if spec == "mean-logprob":
            if position is not None:
                raise BilensError("position: target='mean-logprob' reads every position; "
                                  "leave position=None")
            return SequenceTarget(p, None, nxt, spec)
        rows = torch.arange(batch, device=logits.device)
        return SequenceTarget(p, Target(label=nxt[rows, p], spec=spec), None, spec)
    if isinstance(spec, str) and spec.partition(":")[0] in ("label", "logprob"):
        raise BilensError(f"target: {spec!r} is for classifiers; a sequence model's "
                          f"log-probability target is 'next' (or 'mean-logprob')")
    rows = torch.arange(batch, device=logits.device)
    try:
        target = resolve_target(spec, logits[rows, p])
    except BilensError as err:
        raise BilensError(f"{err}; for a sequence model: {SEQUENCE_TARGET_HELP}") from None
    return SequenceTarget(p, target, None, target.spec)


@torch.no_grad()
def resolve_sequence_baseline(
    baseline: object,
    model: torch.nn.Module,
    z: Float[Tensor, "batch layer seq d_hidden"],
    reference: Int[Tensor, "ref ref_seq"] | None = None,
) -> Float[Tensor, "batch layer seq d_hidden"]:
    """`b` with the shape of `z`: zero, the channel's mean over the reference sequences and
    their positions, or a tensor (`[L, H]`, `[L, T, H]` or `[B, L, T, H]`)."""
    shape = tuple(z.shape)
    B, L, T, H = shape
    if baseline is None or (isinstance(baseline, str) and baseline == "zero"):
        return torch.zeros_like(z)
    if isinstance(baseline, str) and baseline == "mean":
        if reference is None:
            raise BilensError("baselines='mean' needs reference=... (token sequences [N, T] "
                              "whose mean activation per channel is the baseline)")
        total = z.new_zeros(L, H)
        count = 0
        for chunk in reference.to(z.device).split(256):
            total += model.run(chunk).z.sum((0, 2))
            count += chunk.shape[0] * chunk.shape[1]
        return (total / count)[None, :, None, :].expand(shape).clone()
    if isinstance(baseline, Tensor):
        b = baseline.to(device=z.device, dtype=z.dtype)
        if tuple(b.shape) == (L, H):
            b = b[None, :, None, :].expand(shape)
        elif tuple(b.shape) == (L, T, H):
            b = b.expand(shape)
        if tuple(b.shape) != shape:
            raise BilensError(f"baselines: a tensor must have shape [{L}, {H}], [{L}, {T}, {H}] "
                              f"or {list(shape)} (z values), got {list(baseline.shape)}")
        if not torch.isfinite(b).all():
            raise BilensError("baselines: contains NaN or inf; pass finite z values")
        return b.clone()
    raise BilensError(f"baselines: unknown {baseline!r}; expected {SEQUENCE_BASELINE_HELP}")


def node_mask(position: Int[Tensor, " batch"], seq: int) -> Tensor:
    """`[B, 1, T, 1]`: True for the positions `t <= p` that can reach the target."""
    t = torch.arange(seq, device=position.device)
    return (t[None, :] <= position[:, None])[:, None, :, None]


def check_sequence_inputs(
    model: BilinearTransformer, tokens: Tensor, target: object, labels: Tensor | None,
    reference: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Check the model, the tokens and the reference; return `(tokens read, on the model's
    device; the next tokens or None)` (`split_next_tokens` unless `labels` are given)."""
    if not isinstance(model, BilinearTransformer):
        raise BilensError(f"model: expected a BilinearTransformer, got {type(model).__name__}")
    cfg = model.config
    if labels is None:
        tokens, labels = split_next_tokens(tokens, target)
    check_tokens(tokens, cfg.vocab_size, cfg.n_ctx)
    if reference is not None:
        check_tokens(reference, cfg.vocab_size, cfg.n_ctx, "reference")
    return tokens.to(model.device), labels


def prepare_sequence(
    model: BilinearTransformer, tokens: Tensor, target: object, position: object,
    baselines: object, labels: Tensor | None, reference: Tensor | None,
) -> tuple[Tensor, TransformerRun, SequenceTarget, Tensor]:
    """Check the inputs and return `(tokens read, clean run, target, b [B, L, T, H])`, for
    the oracle. The attribution checks them the same way (`check_sequence_inputs`) and
    resolves the target and baselines the same way, on its own forward's clean values;
    `verify` ablates on the attribution's clean run, so both read the same."""
    tokens, labels = check_sequence_inputs(model, tokens, target, labels, reference)
    with torch.no_grad():
        run = model.run(tokens)
    tgt = resolve_sequence_target(target, run.logits, position,
                                  None if labels is None else torch.as_tensor(labels))
    b = resolve_sequence_baseline(baselines, model, run.z, reference)
    return tokens, run, tgt, b

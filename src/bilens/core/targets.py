"""The scalar `f(x)` that attribution and ablation explain (docs/spec.md §2).

A `Target` is resolved once per batch, from the clean logits, and is then fixed:
ablating a channel must not change *which* logit is read, only its value.

Specs accepted by `resolve_target` (captum's `target=` idiom, plus docs/spec.md §8's strings):

- `"predicted"`: the clean run's arg-max logit; `"label"`: the true class's logit
- `"margin"`: the clean run's top-1 minus top-2 logit, `logit_c1 - logit_c2` with `c1`, `c2`
  the two largest clean logits of each input (both fixed on the clean run)
- `"class:C"` or an int `C`; `"diff:C1,C2"`: `logit_C1 - logit_C2`
- a list or integer tensor `[B]`: one class per input
- a float tensor `[n_out]` or `[B, n_out]`: any direction `u . logits`
- `"logprob"`: the true label's log-probability (not linear in the logits)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from bilens.core.errors import BilensError

TARGET_HELP = ("predicted | margin | label | logprob | class:C | diff:C1,C2 | int | "
               "int tensor [B] | float tensor [n_out] or [B, n_out]")


@dataclass
class Target:
    """A resolved target: either a direction `u` per input, or a label for log-probability."""

    direction: Float[Tensor, "batch n_out"] | None = None
    label: Int[Tensor, " batch"] | None = None
    spec: str = ""

    @property
    def is_linear(self) -> bool:
        """True when `f` is linear in the logits (every target but `logprob`)."""
        return self.direction is not None

    def __call__(self, logits: Float[Tensor, "batch n_out"]) -> Float[Tensor, " batch"]:
        """`f` from logits; extra leading axes (e.g. `[B, K, n_out]`) broadcast over batch."""
        if self.direction is not None:
            u = self.direction.to(logits.dtype)
            u = u.view(u.shape[0], *([1] * (logits.ndim - 2)), u.shape[1])
            return (logits * u).sum(-1)
        label = self.label.view(self.label.shape[0], *([1] * (logits.ndim - 2)), 1)
        return logits.log_softmax(-1).gather(-1, label.expand(*logits.shape[:-1], 1)).squeeze(-1)

    def grad_logits(self, logits: Float[Tensor, "batch n_out"]) -> Float[Tensor, "batch n_out"]:
        """`d f / d logits` at `logits`."""
        if self.direction is not None:
            return self.direction.to(logits.dtype)
        onehot = torch.nn.functional.one_hot(self.label, logits.shape[-1]).to(logits.dtype)
        return onehot - logits.softmax(-1)

    def select(self, index: Tensor | slice) -> Target:
        """The target of a sub-batch."""
        return Target(
            direction=None if self.direction is None else self.direction[index],
            label=None if self.label is None else self.label[index],
            spec=self.spec,
        )

    def to_tensors(self) -> dict[str, Tensor]:
        """docs/spec.md §7: `target [N, n_out]` for a logit-linear target, else `label [N]`."""
        if self.direction is not None:
            return {"target": self.direction}
        return {"label": self.label}


def reads_logits(spec: object) -> bool:
    """True when resolving `spec` reads the clean logits' values (`"predicted"`, `"margin"`),
    not only their shape: every other target is fixed before any forward pass."""
    return isinstance(spec, str) and spec in ("predicted", "margin")


def _class_index(value: object, n_out: int, what: str) -> int:
    try:
        c = int(value)
    except (TypeError, ValueError):
        raise BilensError(f"target: {what} must be an integer class index, got {value!r}") from None
    if not 0 <= c < n_out:
        raise BilensError(f"target: class {c} is out of range; the model has {n_out} outputs "
                          f"(valid 0..{n_out - 1})")
    return c


def _needs_labels(labels: Tensor | None, spec: str, batch: int, n_out: int) -> Tensor:
    if labels is None:
        raise BilensError(f"target={spec!r} needs the true labels; pass labels=... "
                          f"(or use target='predicted')")
    labels = torch.as_tensor(labels).long().flatten()
    if labels.shape[0] != batch:
        raise BilensError(f"labels: expected {batch} labels, one per input, got {labels.shape[0]}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_out):
        raise BilensError(f"labels: values must lie in 0..{n_out - 1}, "
                          f"got {labels.min().item()}..{labels.max().item()}")
    return labels


def resolve_target(
    spec: object,
    logits: Float[Tensor, "batch n_out"],
    labels: Int[Tensor, " batch"] | None = None,
) -> Target:
    """Turn a user's target spec into a `Target` for this batch.

    Args:
        spec: see the module docstring.
        logits: the clean logits `[B, n_out]` (used by `"predicted"`, and for shapes).
        labels: true classes `[B]`, needed by `"label"` and `"logprob"`.

    Returns:
        The resolved `Target`.

    Example:
        >>> t = resolve_target("diff:3,5", torch.zeros(2, 10))
        >>> t.direction[0, 3].item(), t.direction[0, 5].item()
        (1.0, -1.0)
    """
    batch, n_out = logits.shape
    if isinstance(spec, Target):                    # resolved elsewhere: onto these logits' device
        return _moved(spec, batch, logits.device)
    if isinstance(spec, str):
        return _from_string(spec, logits, labels)
    if isinstance(spec, bool):
        raise BilensError(f"target: got a bool; expected {TARGET_HELP}")
    if isinstance(spec, int):
        c = _class_index(spec, n_out, "an int target")
        return Target(direction=_onehot(torch.full((batch,), c), logits), spec=f"class:{c}")
    if isinstance(spec, (list, tuple)):
        spec = torch.as_tensor(spec)
    if isinstance(spec, Tensor):
        return _from_tensor(spec, logits)
    raise BilensError(f"target: cannot use {type(spec).__name__}; expected {TARGET_HELP}")


def _onehot(cls: Tensor, logits: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(cls.to(logits.device), logits.shape[-1]).to(logits.dtype)


def _margin(logits: Tensor) -> Tensor:
    """`onehot(top-1) - onehot(top-2)` of each row of the clean logits."""
    if logits.shape[-1] < 2:
        raise BilensError(f"target: 'margin' needs at least 2 outputs (top-1 minus top-2); "
                          f"the model has {logits.shape[-1]}; use target='predicted'")
    top2 = logits.topk(2, dim=-1).indices
    return _onehot(top2[:, 0], logits) - _onehot(top2[:, 1], logits)


def _moved(spec: Target, batch: int, device: torch.device) -> Target:
    """A resolved `Target` checked against the batch and moved onto `device`."""
    held = spec.direction if spec.direction is not None else spec.label
    if held is not None and held.shape[0] != batch:
        raise BilensError(f"target: a resolved Target must hold one row per input; got "
                          f"{held.shape[0]} for {batch} inputs; resolve it on this batch's "
                          f"logits")
    if held is None or held.device == device:
        return spec
    return Target(direction=None if spec.direction is None else spec.direction.to(device),
                  label=None if spec.label is None else spec.label.to(device), spec=spec.spec)


def _from_string(spec: str, logits: Tensor, labels: Tensor | None) -> Target:
    """`predicted`, `label`, `logprob`, `class:C`, `diff:C1,C2` or a class index."""
    batch, n_out = logits.shape
    name, _, arg = spec.partition(":")
    if name == "predicted" and not arg:
        return Target(direction=_onehot(logits.argmax(-1), logits), spec=spec)
    if name == "margin" and not arg:
        return Target(direction=_margin(logits), spec=spec)
    if name == "label" and not arg:
        return Target(direction=_onehot(_needs_labels(labels, spec, batch, n_out), logits),
                      spec=spec)
    if name == "logprob" and not arg:
        return Target(label=_needs_labels(labels, spec, batch, n_out).to(logits.device),
                      spec=spec)
    if name == "class":
        c = _class_index(arg, n_out, "class:C")
        return Target(direction=_onehot(torch.full((batch,), c), logits), spec=spec)
    if name == "diff":
        parts = arg.split(",")
        if len(parts) != 2:
            raise BilensError(f"target: expected diff:C1,C2 (two classes), got {spec!r}")
        c1, c2 = (_class_index(p, n_out, "diff:C1,C2") for p in parts)
        if c1 == c2:
            raise BilensError(f"target: {spec!r} subtracts class {c1} from itself, so f = 0 "
                              f"on every input and there is nothing to explain; name two "
                              f"different classes, e.g. diff:{c1},{(c1 + 1) % n_out}")
        u = _onehot(torch.full((batch,), c1), logits) - _onehot(torch.full((batch,), c2), logits)
        return Target(direction=u, spec=spec)
    if name.lstrip("-").isdigit() and not arg:
        return resolve_target(int(name), logits, labels)
    raise BilensError(f"target: unknown spec {spec!r}; expected {TARGET_HELP}")


def _from_tensor(spec: Tensor, logits: Tensor) -> Target:
    """One class per input (an integer tensor `[B]`) or a direction `[n_out]` / `[B, n_out]`."""
    batch, n_out = logits.shape
    if not spec.is_floating_point():
        cls = spec.flatten().long()
        if cls.shape[0] != batch:
            raise BilensError(f"target: an integer tensor gives one class per input; expected "
                              f"{batch} entries, got {cls.shape[0]}")
        for c in (cls.min().item(), cls.max().item()):
            _class_index(c, n_out, "each entry")
        return Target(direction=_onehot(cls, logits), spec="classes")
    if spec.shape == (n_out,):
        spec = spec.expand(batch, n_out)
    if spec.shape != (batch, n_out):
        raise BilensError(f"target: a direction must have shape [{n_out}] or "
                          f"[{batch}, {n_out}] (n_out = {n_out}), got {list(spec.shape)}")
    if not torch.isfinite(spec).all():
        raise BilensError("target: the direction contains NaN or inf")
    zero = (spec == 0).all(-1).nonzero().flatten().tolist()
    if zero:
        rows = "" if spec.shape[0] == 1 or len(zero) == batch else (
            f" for input(s) {', '.join(map(str, zero[:5]))}{', ...' if len(zero) > 5 else ''}")
        raise BilensError(f"target: the direction is all zeros{rows}, so f = 0 there and "
                          f"there is nothing to explain; give a nonzero direction u "
                          f"(f = u . logits)")
    return Target(direction=spec.to(device=logits.device, dtype=logits.dtype).clone(),
                  spec="direction")

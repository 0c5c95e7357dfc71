"""Float64 slow references for attribution, drift and joint ablation, written from SPEC §1-§5.

One input at a time, one channel at a time, no batching. They read only the SPEC §6 tensor
names of a state dict (`embed.weight`, `layers.{l}.L`, ...), never bilens's model,
attribution, ablation or drift code, so a test that holds a fast path to them can catch it
being wrong. (`tests/reference.py` is the older, ablation-only sibling.)

- `forward`: SPEC §1 line by line, with ablated channels (`patch`), an offset added to `z`
  (for `d f / d z`), and held statistics (`frozen`: every norm's `s` a constant; LayerNorm's
  `mu` is still recomputed, "centering kept", SPEC §4).
- `grad_reference`: `g = d f / d z` in every layer under `frozen` or `live`, by autograd
  through `forward` (the held `s` are plain Python floats, so nothing can differentiate
  them); `grad_finite_difference` checks it by central differences.
- `drift_reference`: SPEC §5's measured `ds/s` (a real rerun), the seed's formula
  `(r . delta) / |r|^2` and `|delta| / |r|`, per input and channel.
- `summary_reference`: the drift summary's numbers (medians, means, the seed estimate
  `median |delta|/|r| / sqrt(d)`) in plain Python.
"""

# ruff: noqa: E741  (`l` is SPEC's layer index)
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch
from torch import Tensor


def literal_params(model: torch.nn.Module) -> tuple[dict[str, Tensor], dict]:
    """The state dict in float64 (detached) and the config as a dict."""
    sd = {k: v.detach().double().clone() for k, v in model.state_dict().items()}
    return sd, model.config.to_dict()


@dataclass
class Trace:
    """One input's literal forward pass. Norms in order of use (post: layer l's norm is
    norm l; pre: layer l's input norm is norm l, the final norm is norm n_layers)."""

    logits: Tensor                                    # [n_out]
    z: list[Tensor] = field(default_factory=list)     # per layer, [d_hidden]
    resid: list[Tensor] = field(default_factory=list)  # per norm, what it normalizes [d]
    s: list[Tensor] = field(default_factory=list)     # per norm, the statistic used (scalar)


def norm(kind: str, r: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float,
         held_s: float | None = None) -> tuple[Tensor, Tensor]:
    """SPEC §1 for one vector `r [d]`: `(N(r), s)`. With `held_s`, `s` is that constant
    (a float: no gradient can flow into it) and LayerNorm's `mu = mean(r)` stays live."""
    d = r.shape[0]
    if kind == "none":
        return r, r.new_tensor(1.0)
    mu = sum(r[i] for i in range(d)) / d if kind == "layer" else r.new_tensor(0.0)
    centered = torch.stack([r[i] - mu for i in range(d)])
    s = torch.sqrt(sum(centered[i] ** 2 for i in range(d)) / d + eps)
    if held_s is not None:
        s = r.new_tensor(float(held_s))
    y = torch.stack([gamma[i] * centered[i] / s for i in range(d)])
    if kind == "layer":
        y = torch.stack([y[i] + beta[i] for i in range(d)])
    return y, s


def forward(sd: dict[str, Tensor], cfg: dict, x: Tensor, *,
            patch: dict[tuple[int, int], float] | None = None,
            offset: Tensor | None = None,
            frozen: list[float] | None = None) -> Trace:
    """SPEC §1 for one input `x [d_in]`.

    Args:
        patch: `{(l, k): b}`: `z_{l,k} := b` (ablation; several channels at once).
        offset: `[n_layers, d_hidden]` added to every `z` after the patch.
        frozen: one `s` per norm, held instead of recomputed.
    """
    kind, post, eps = cfg["norm"], cfg["norm_position"] == "post", cfg["eps"]
    patch = patch or {}
    trace = Trace(logits=torch.empty(0))

    def N(name: str, r: Tensor) -> Tensor:
        i = len(trace.s)
        y, s = norm(kind, r, sd.get(f"{name}.weight"), sd.get(f"{name}.bias"), eps,
                    None if frozen is None else frozen[i])
        trace.resid.append(r)
        trace.s.append(s)
        return y

    h = sd["embed.weight"] @ x.double()                                   # h0 = E x
    for l in range(cfg["n_layers"]):
        L, R, D = sd[f"layers.{l}.L"], sd[f"layers.{l}.R"], sd[f"layers.{l}.D"]
        u = h if post else N(f"layers.{l}.norm", h)
        z = []
        for k in range(cfg["d_hidden"]):
            zk = (L[k] @ u) * (R[k] @ u)                                  # (L u)_k (R u)_k
            if (l, k) in patch:
                zk = zk * 0 + patch[(l, k)]
            if offset is not None:
                zk = zk + offset[l, k]
            z.append(zk)
        z = torch.stack(z)
        trace.z.append(z)
        h = h + D @ z                                                     # r = h + D z
        if post:
            h = N(f"layers.{l}.norm", h)                                  # h <- N_l(r)
    if not post:
        h = N("final_norm", h)
    trace.logits = sd["head.weight"] @ h                                  # W h
    return trace


def target_value(logits: Tensor, direction: Tensor | None = None,
                 label: int | None = None) -> Tensor:
    """SPEC §2: `u . logits`, or the log-probability of `label`."""
    if direction is not None:
        return sum(direction[c] * logits[c] for c in range(logits.shape[0]))
    log_z = torch.log(sum(torch.exp(logits[c]) for c in range(logits.shape[0])))
    return logits[label] - log_z


def clean_stats(sd: dict[str, Tensor], cfg: dict, x: Tensor) -> list[float]:
    """Every norm's `s` on the clean run, as floats (what `frozen` holds)."""
    with torch.no_grad():
        return [float(s) for s in forward(sd, cfg, x).s]


def grad_reference(sd: dict[str, Tensor], cfg: dict, x: Tensor, mode: str,
                   direction: Tensor | None = None, label: int | None = None) -> Tensor:
    """`g = d f / d z` `[n_layers, d_hidden]` for one input: `live` is the true gradient,
    `frozen` the gradient of the network whose norms hold the clean `s` (SPEC §4)."""
    frozen = clean_stats(sd, cfg, x) if mode == "frozen" else None
    offset = torch.zeros(cfg["n_layers"], cfg["d_hidden"], dtype=torch.float64,
                         requires_grad=True)
    with torch.enable_grad():
        f = target_value(forward(sd, cfg, x, offset=offset, frozen=frozen).logits,
                         direction, label)
        (g,) = torch.autograd.grad(f, offset)
    return g


def grad_finite_difference(sd: dict[str, Tensor], cfg: dict, x: Tensor, mode: str,
                           direction: Tensor | None = None, label: int | None = None,
                           h: float = 1e-5) -> Tensor:
    """The same `g` by central differences of `f` in each `z_{l,k}` (held `s` for frozen)."""
    frozen = clean_stats(sd, cfg, x) if mode == "frozen" else None
    g = torch.zeros(cfg["n_layers"], cfg["d_hidden"], dtype=torch.float64)
    with torch.no_grad():
        for l in range(cfg["n_layers"]):
            for k in range(cfg["d_hidden"]):
                f = []
                for step in (h, -h):
                    offset = torch.zeros_like(g)
                    offset[l, k] = step
                    logits = forward(sd, cfg, x, offset=offset, frozen=frozen).logits
                    f.append(target_value(logits, direction, label))
                g[l, k] = (f[0] - f[1]) / (2 * h)
    return g


def first_norm(cfg: dict, l: int) -> int:
    """The norm that first sees layer `l`'s write (post: its own; pre: the next one's)."""
    return l if cfg["norm_position"] == "post" else l + 1


@dataclass
class DriftRef:
    """Per channel `[n_layers, d_hidden]` for one input."""

    measured: Tensor       # s'/s - 1 from a real rerun
    formula: Tensor        # (r . delta) / |r|^2
    delta_over_r: Tensor   # |delta| / |r|


def drift_reference(sd: dict[str, Tensor], cfg: dict, x: Tensor, b: Tensor) -> DriftRef:
    """SPEC §5 for one input, every channel, baseline `b [n_layers, d_hidden]`:
    `delta = D_l[:, k] (b - z_{l,k})`; `r` (and `delta`) centred for LayerNorm, whose `s`
    is computed from centred vectors. Without a norm there is no statistic: all zero."""
    n_layers, d_hidden, d = cfg["n_layers"], cfg["d_hidden"], cfg["d_model"]
    out = {name: torch.zeros(n_layers, d_hidden, dtype=torch.float64)
           for name in ("measured", "formula", "delta_over_r")}
    if cfg["norm"] == "none":
        return DriftRef(**out)
    with torch.no_grad():
        clean = forward(sd, cfg, x)
        for l in range(n_layers):
            j = first_norm(cfg, l)
            for k in range(d_hidden):
                value = float(b[l, k])
                ablated = forward(sd, cfg, x, patch={(l, k): value})
                out["measured"][l, k] = ablated.s[j] / clean.s[j] - 1
                r = clean.resid[j]
                delta = sd[f"layers.{l}.D"][:, k] * (value - clean.z[l][k])
                if cfg["norm"] == "layer":
                    r = r - sum(r[i] for i in range(d)) / d
                    delta = delta - sum(delta[i] for i in range(d)) / d
                r_dot_delta = sum(r[i] * delta[i] for i in range(d))
                r_sq = sum(r[i] ** 2 for i in range(d))
                out["formula"][l, k] = r_dot_delta / r_sq
                out["delta_over_r"][l, k] = math.sqrt(sum(delta[i] ** 2 for i in range(d))
                                                      / r_sq)
    return DriftRef(**out)


def effects_reference(sd: dict[str, Tensor], cfg: dict, x: Tensor, b: Tensor,
                      direction: Tensor | None = None, label: int | None = None,
                      frozen_norm: bool = False) -> Tensor:
    """SPEC §3 for one input: `f(x | z_{l,k} := b_{l,k}) - f(x)` per channel, in the real
    network or (`frozen_norm`) with every norm holding its clean `s`."""
    frozen = clean_stats(sd, cfg, x) if frozen_norm else None
    out = torch.zeros(cfg["n_layers"], cfg["d_hidden"], dtype=torch.float64)
    with torch.no_grad():
        f0 = target_value(forward(sd, cfg, x).logits, direction, label)
        for l in range(cfg["n_layers"]):
            for k in range(cfg["d_hidden"]):
                logits = forward(sd, cfg, x, patch={(l, k): float(b[l, k])}, frozen=frozen).logits
                out[l, k] = target_value(logits, direction, label) - f0
    return out


def summary_reference(measured: list[float], formula: list[float], ratio: list[float],
                      actual: list[float], actual_frozen: list[float], d_model: int) -> dict:
    """The drift summary over a list of ablated channels, in plain Python."""
    abs_m = [abs(m) for m in measured]
    return {
        "abs_ds_over_s_mean": sum(abs_m) / len(abs_m),
        "abs_ds_over_s_median": statistics.median(abs_m),
        "delta_over_r_median": statistics.median(ratio),
        "seed_estimate": statistics.median(ratio) / math.sqrt(d_model),
        "formula_ne": (sum(abs(f - m) for f, m in zip(formula, measured, strict=True))
                       / sum(abs_m)) if sum(abs_m) > 0 else math.nan,
        "effect_ne": (sum(abs(a - af) for a, af in zip(actual, actual_frozen, strict=True))
                      / sum(abs(a) for a in actual)),
    }

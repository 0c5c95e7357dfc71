"""A slow reference of the bilinear transformer, written from SPEC §9, one sequence and one
position at a time, in float64. It reads only the checkpoint tensor names of §9 (a state
dict), never the model code.

`forward_seq` returns the logits and every statistic it used (`s`, `mu` per norm and
position, the pattern row per layer, head and position); passing `frozen_s` / `frozen_p`
back (detached) holds them, `ablate` sets nodes, and `z_offset` (a tensor requiring grad)
gives `d f / d z` by autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _norm(kind, r, gamma, beta, eps, s_frozen=None):
    """SPEC §1 for one vector: `(N(r), s, mu)`; a frozen `s` keeps LayerNorm's centring."""
    d = r.shape[0]
    if kind == "none":
        return r, torch.ones(()), torch.zeros(())
    mu = r.sum() / d if kind == "layer" else torch.zeros((), dtype=r.dtype)
    centred = r - mu
    s = torch.sqrt((centred * centred).sum() / d + eps) if s_frozen is None else s_frozen
    y = gamma * centred / s
    return (y + beta if kind == "layer" else y), s, mu


def _rope(v, t, base):
    """Rotary positions of one head's vector `v [d_head]` at position `t`."""
    dh = v.shape[0]
    half = dh // 2
    parts = []
    for i in range(dh):
        theta = base ** (-2 * (i % half) / dh)
        phi = t * theta
        rot = -v[i + half] if i < half else v[i - half]
        parts.append(v[i] * math.cos(phi) + rot * math.sin(phi))
    return torch.stack(parts)


def forward_seq(sd: dict[str, Tensor], cfg: dict, tokens: list[int], ablate=(), z_offset=None,
                frozen_s=None, frozen_p=None, norm_offset=None, record=None):
    """Logits `[T, vocab]` of one sequence, following SPEC §9 line by line.

    Args:
        ablate: iterable of `(l, t, k, value)`: `z_l[t, k] := value`.
        z_offset: `[L, T, H]` added to every `z` (after the ablations).
        frozen_s: `{(norm_name, t): s}` held instead of recomputed.
        frozen_p: `{(l, head, t): pattern row [t + 1]}` held instead of recomputed.
        norm_offset: `{(norm_name, t): vector}` added to that norm's output.
        record: a dict that receives each norm's input `r` under `(norm_name, t)`.

    Returns:
        `(logits [T, vocab], z [L, T, H], stats {(norm_name, t): s}, patterns {...})`.
    """
    sd = {k: v.double() for k, v in sd.items()}
    kind, pre, eps = cfg["norm"], cfg["norm_position"] == "pre", cfg["eps"]
    alpha, base, nh = cfg["attn_scale"], cfg["rope_base"], cfg["n_heads"]
    d = cfg["d_model"]
    dh = d // nh
    T = len(tokens)
    stats, patterns = {}, {}
    ablate = {(l, t, k): v for l, t, k, v in ablate}

    def norm(name, t, r):
        fs = None if frozen_s is None else frozen_s[(name, t)]
        y, s, _ = _norm(kind, r, sd.get(f"{name}.weight"), sd.get(f"{name}.bias"), eps, fs)
        stats[(name, t)] = s
        if record is not None:
            record[(name, t)] = r
        if norm_offset is not None and (name, t) in norm_offset:
            y = y + norm_offset[(name, t)]
        return y

    def attention(l, a):                                   # a: list of T vectors
        W = {n: sd[f"layers.{l}.attn.{n}.weight"] for n in "qkvo"}
        out = []
        for t in range(T):
            o = []
            for j in range(nh):
                rows = slice(j * dh, (j + 1) * dh)
                q = _rope(W["q"][rows] @ a[t], t, base)
                ks = [_rope(W["k"][rows] @ a[u], u, base) for u in range(t + 1)]
                vs = [W["v"][rows] @ a[u] for u in range(t + 1)]
                if frozen_p is None:
                    scores = torch.stack([q @ k / math.sqrt(dh) for k in ks])
                    p = torch.softmax(scores, 0)
                else:
                    p = frozen_p[(l, j, t)]
                patterns[(l, j, t)] = p
                o.append(sum(p[u] * vs[u] for u in range(t + 1)))
            out.append(W["o"] @ torch.cat(o))
        return out

    h = [sd["embed.weight"][x] for x in tokens]
    zs = []
    for l in range(cfg["n_layers"]):
        L, R, D = sd[f"layers.{l}.L"], sd[f"layers.{l}.R"], sd[f"layers.{l}.D"]
        an, mn = f"layers.{l}.attn_norm", f"layers.{l}.mlp_norm"
        if pre:
            att = attention(l, [norm(an, t, h[t]) for t in range(T)])
            h = [h[t] + alpha * att[t] for t in range(T)]
        else:
            att = attention(l, h)
            h = [norm(an, t, h[t] + alpha * att[t]) for t in range(T)]
        zl = []
        for t in range(T):
            u = norm(mn, t, h[t]) if pre else h[t]
            z = (L @ u) * (R @ u)
            z = torch.stack([torch.as_tensor(ablate.get((l, t, k), z[k]), dtype=z.dtype)
                             for k in range(z.shape[0])])
            if z_offset is not None:
                z = z + z_offset[l, t]
            zl.append(z)
            r = h[t] + D @ z
            h[t] = r if pre else norm(mn, t, r)
        zs.append(torch.stack(zl))
    if pre:
        h = [norm("final_norm", t, h[t]) for t in range(T)]
    logits = torch.stack([sd["head.weight"] @ v for v in h])
    return logits, torch.stack(zs), stats, patterns


def target_value(logits: Tensor, spec: str, p: int, nxt: list[int] | None, u=None) -> Tensor:
    """`f` of one sequence: a class at `p` (`class:C`), `next`, `mean-logprob`, a direction."""
    if spec == "next":
        return torch.log_softmax(logits[p], 0)[nxt[p]]
    if spec == "mean-logprob":
        lp = torch.log_softmax(logits, -1)
        return sum(lp[t, nxt[t]] for t in range(logits.shape[0])) / logits.shape[0]
    if spec == "direction":
        return u @ logits[p]
    return logits[p, int(spec.split(":")[1])]

"""Slow references for the sequence model, in float64, one sequence and one position at a
time, written from SPEC §9 (`reference_forward`) and from the published layout's description
in issue 13 (`published_forward`). They read only tensor names, never bilens' model code."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def _norm(kind: str, r: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float
          ) -> tuple[Tensor, float, float]:
    """SPEC §1 on one vector: `(N(r), s, mu)`, with plain sums."""
    d = r.shape[0]
    if kind == "none":
        return r.clone(), 1.0, 0.0
    mu = 0.0 if kind == "rms" else sum(float(v) for v in r) / d
    s = math.sqrt(sum((float(v) - mu) ** 2 for v in r) / d + eps)
    y = torch.stack([gamma[i] * (r[i] - mu) / s for i in range(d)])
    return (y + beta if kind == "layer" else y), s, mu


def _rope(v: Tensor, t: int, base: float) -> Tensor:
    """rope(v)_t = v cos(phi_t) + rot(v) sin(phi_t), written out per pair (i, i + d/2)."""
    d = v.shape[0]
    half = d // 2
    out = torch.empty_like(v)
    for i in range(half):
        angle = t * base ** (-2 * i / d)
        out[i] = v[i] * math.cos(angle) - v[i + half] * math.sin(angle)
        out[i + half] = v[i + half] * math.cos(angle) + v[i] * math.sin(angle)
    return out


def reference_forward(sd: dict[str, Tensor], cfg: dict, x: list[int],
                      patch: dict[tuple[int, int, int], float] | None = None) -> Tensor:
    """Logits `[T, vocab]` for one sequence, SPEC §9 line by line.

    Args:
        sd: the §9 tensors (float64).
        cfg: the §9 config keys.
        x: the token ids.
        patch: `{(l, t, k): b}`: node `z_l[t, k] := b`.
    """
    sd = {k: v.double() for k, v in sd.items()}
    kind, pre, eps = cfg["norm"], cfg["norm_position"] == "pre", cfg["eps"]
    alpha, base = cfg.get("attn_scale", 1.0), cfg.get("rope_base", 10000.0)
    n_heads, d = cfg["n_heads"], cfg["d_model"]
    dh = d // n_heads
    patch = patch or {}

    def N(name: str, r: Tensor) -> Tensor:
        return _norm(kind, r, sd.get(f"{name}.weight"), sd.get(f"{name}.bias"), eps)[0]

    T = len(x)
    h = [sd["embed.weight"][x[t]].clone() for t in range(T)]
    for l in range(cfg["n_layers"]):
        p = f"layers.{l}"
        a = [N(f"{p}.attn_norm", h[t]) if pre else h[t] for t in range(T)]
        q = [sd[f"{p}.attn.q.weight"] @ a[t] for t in range(T)]
        k = [sd[f"{p}.attn.k.weight"] @ a[t] for t in range(T)]
        v = [sd[f"{p}.attn.v.weight"] @ a[t] for t in range(T)]
        attn = []
        for t in range(T):
            o = torch.zeros(d, dtype=torch.float64)
            for j in range(n_heads):
                sl = slice(j * dh, (j + 1) * dh)
                qj = _rope(q[t][sl], t, base)
                scores = [float(qj @ _rope(k[s][sl], s, base)) / math.sqrt(dh)
                          for s in range(t + 1)]
                m = max(scores)
                w = [math.exp(sc - m) for sc in scores]
                for s in range(t + 1):
                    o[sl] += w[s] / sum(w) * v[s][sl]
            attn.append(sd[f"{p}.attn.o.weight"] @ o)
        for t in range(T):
            if pre:
                h[t] = h[t] + alpha * attn[t]
            else:
                h[t] = N(f"{p}.attn_norm", h[t] + alpha * attn[t])
        for t in range(T):
            u = N(f"{p}.mlp_norm", h[t]) if pre else h[t]
            z = (sd[f"{p}.L"] @ u) * (sd[f"{p}.R"] @ u)
            for (pl, pt, pk), b in patch.items():
                if (pl, pt) == (l, t):
                    z[pk] = b
            r = h[t] + sd[f"{p}.D"] @ z
            h[t] = r if pre else N(f"{p}.mlp_norm", r)
    return torch.stack([sd["head.weight"] @ (N("final_norm", h[t]) if pre else h[t])
                        for t in range(T)])


def published_forward(tensors: dict[str, np.ndarray], cfg: dict, x: list[int]) -> np.ndarray:
    """Logits `[T, vocab]` of the published bilinear-transformer layout (issue 13, item 6),
    from its own tensor names, in numpy: RMSNorm without gain (eps 1e-8) before attention,
    before the MLP and before the head (none when normalization is false); fused qkv rows
    q, k, v (head-major); attention output times 1/sqrt(2 n_layer); rotary base 10000
    (rotate-half); mlp.w = [left; right], mlp.p the down map."""
    n_layer, n_head, d = cfg["n_layer"], cfg["n_head"], cfg["d_model"]
    dh, H, T = d // n_head, cfg["d_hidden"], len(x)

    def rms(r):
        if not cfg["normalization"]:
            return r
        return r / np.sqrt((r * r).mean(-1, keepdims=True) + 1e-8)

    inv = 10000.0 ** (-np.arange(0, dh, 2) / dh)                       # [dh/2]
    ang = np.arange(T)[:, None] * inv[None, :]                          # [T, dh/2]
    cos, sin = np.cos(ang), np.sin(ang)

    def rotary(m):                                                      # m [heads, T, dh]
        a, b = m[..., : dh // 2], m[..., dh // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    h = tensors["transformer.wte.weight"][x]                            # [T, d]
    for l in range(n_layer):
        pre = f"transformer.h.{l}"
        qkv = rms(h) @ tensors[f"{pre}.attn.qkv.weight"].T              # [T, 3d]
        q, k, v = (qkv[:, i * d:(i + 1) * d].reshape(T, n_head, dh).transpose(1, 0, 2)
                   for i in range(3))
        q, k = rotary(q), rotary(k)
        scores = np.einsum("htd,hsd->hts", q, k) / np.sqrt(dh)
        scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
        o = np.einsum("hts,hsd->thd", w, v).reshape(T, d)
        h = h + (o @ tensors[f"{pre}.attn.o.weight"].T) / np.sqrt(2 * n_layer)
        lr = rms(h) @ tensors[f"{pre}.mlp.w.weight"].T                  # [T, 2H]
        h = h + (lr[:, :H] * lr[:, H:]) @ tensors[f"{pre}.mlp.p.weight"].T
    return rms(h) @ tensors["lm_head.weight"].T

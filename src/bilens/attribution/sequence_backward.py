"""`d f / d z` for every node of the bilinear transformer from one clean run, written out.

The backward pass of `BilinearTransformer.run` (docs/spec.md §9), from the head to the
embedding, on `[B, T, .]` tensors; `g` is `d f / d h` of the residual stream. Per layer,
pre-norm (post-norm runs the same steps in its own order):

    MLP        d f / d z = D^T g;   d f / d u = L^T (g_z * R u) + R^T (g_z * L u)
    norm       g <- J^T g,  J = diag(gamma / s) (I - c c^T / (d s^2))      (rms, live)
               with `c` the (centred) input, `(I - 1 1^T / d)` first for LayerNorm, and
               `J = diag(gamma / s)` (times the centring) with the statistic held
    attention  o = P v,  P = softmax(q k^T / sqrt(d_head)), q and k rotated:
               g_v = P^T g_o;  g_S = P * (g_P - rowsum(P * g_P)),  g_P = g_o v^T;
               g_q = g_S k / sqrt(d_head),  g_k = g_S^T q / sqrt(d_head), rotated back;
               with the pattern held only `g_v`
    residual   the identity

`graph` is one of `attribution.sequence`'s graphs: `frozen` holds every norm's statistic and
every pattern, `frozen-norm` the statistics, `live` nothing. `attribution.sequence` holds the
two to 1e-10 in float64 against its autograd pass (`method="autograd"`), and both against the
per-position reference of `tests/test_sequence_reference.py`.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import Tensor

from bilens.attribution.backward import norm_backward
from bilens.core.models.transformer import (
    BilinearTransformer,
    TransformerRun,
    rope,
    rope_angles,
)
from bilens.core.sequence import SequenceTarget

HOLDS = {"frozen": (True, True), "frozen-norm": (True, False), "live": (False, False)}


def gradients_explicit(model: BilinearTransformer, run: TransformerRun, tgt: SequenceTarget,
                       graph: str, norm_outputs: tuple[int, ...] = ()
                       ) -> tuple[Tensor, dict[int, Tensor]]:
    """`d f / d z` `[B, L, T, H]` under `graph`'s linearization at the clean `run` (every
    field kept, `run(..., intermediates=True)`; `logits` may be None), and `d f / d N_i(r)`
    `[B, T, d_model]` at the output of each norm `i` of `norm_outputs`."""
    cfg = model.config
    held_norm, held_pattern = HOLDS[graph]
    pre, alpha = cfg.norm_position == "pre", cfg.attn_scale
    at_norm: dict[int, Tensor] = {}

    def norm_back(i: int, g: Tensor) -> Tensor:
        if i in norm_outputs:
            at_norm[i] = g
        return _norm_backward(model, run, i, g, held_norm)

    g = _head_backward(model, run, tgt)                                  # d f / d final
    if pre:
        g = norm_back(2 * cfg.n_layers, g)
    g_z = run.z.new_empty(run.z.shape)
    for l in reversed(range(cfg.n_layers)):
        layer = model.layers[l]
        if not pre:
            g = norm_back(2 * l + 1, g)                                  # h <- N(h + D z)
        g_z[:, l] = g_zl = g @ layer.D                                   # [B, T, H]
        g_u = (g_zl * run.right[:, l]) @ layer.L + (g_zl * run.left[:, l]) @ layer.R
        g = g + (norm_back(2 * l + 1, g_u) if pre else g_u)              # u = N(h) | h
        if not pre:
            g = norm_back(2 * l, g)                                      # h <- N(h + attn)
        g_a = _attention_backward(model, run, l, alpha * g, held_pattern)
        g = g + (norm_back(2 * l, g_a) if pre else g_a)                  # a = N(h) | h
    return g_z, at_norm


def _head_backward(model: BilinearTransformer, run: TransformerRun, tgt: SequenceTarget
                   ) -> Tensor:
    """`d f / d final` `[B, T, d]`: the target's gradient at the logits (at `p`, or at every
    position for `mean-logprob`), through the head."""
    final, W = run.final, model.head.weight
    B, T, _ = final.shape
    if tgt.every_position:              # f = mean_t log p(x_{t+1}): (onehot - softmax) / T
        logits = final @ W.T
        onehot = torch.nn.functional.one_hot(tgt.next_tokens, W.shape[0]).to(final.dtype)
        return (onehot - logits.softmax(-1)) @ W / T
    g = torch.zeros_like(final)
    rows = torch.arange(B, device=final.device)
    logits = final[rows, tgt.position] @ W.T                              # [B, vocab]
    g[rows, tgt.position] = tgt.target.grad_logits(logits) @ W
    return g


def _norm_backward(model: BilinearTransformer, run: TransformerRun, i: int, g: Tensor,
                   held: bool) -> Tensor:
    """`J^T g` of norm `i` at every position (`g` `[B, T, d]` at its output): the MLP
    network's `backward.norm_backward`, on the run's statistics with the norm axis second
    (views, as `renorm`'s closed forms read them)."""
    stats = SimpleNamespace(resid=run.resid.movedim(2, 1), scale=run.scale.movedim(2, 1),
                            mean=run.mean.movedim(2, 1))
    return norm_backward(model, i, stats, g, "frozen" if held else "live")


def _attention_backward(model: BilinearTransformer, run: TransformerRun, l: int, g: Tensor,
                        held: bool) -> Tensor:
    """`d f / d a` `[B, T, d]` of layer `l`'s attention input, given `g = d f / d Attn(a)`
    (the residual's gradient times `attn_scale`)."""
    attn = model.layers[l].attn
    a, P = run.attn_in[:, l], run.pattern[:, l]                           # [B, nh, T, T]
    B, T, d = a.shape
    g_o = (g @ attn.o.weight).view(B, T, attn.n_heads, attn.d_head).transpose(1, 2)
    g_v = P.transpose(-1, -2) @ g_o                                       # [B, nh, T, dh]
    out = _flat(g_v) @ attn.v.weight
    if held:                                                # the pattern held: `v` alone
        return out
    q, k, v = attn.qkv(a)                                                 # rotated
    g_P = g_o @ v.transpose(-1, -2)
    g_S = P * (g_P - (P * g_P).sum(-1, keepdim=True)) / math.sqrt(attn.d_head)
    cos, sin = rope_angles(T, attn.d_head, attn.rope_base, a.dtype, a.device)
    # rope's adjoint is rope at -phi: rot^T = -rot, and sin(phi) is the same in both halves
    g_q, g_k = (rope(x, cos, -sin) for x in (g_S @ k, g_S.transpose(-1, -2) @ q))
    return out + _flat(g_q) @ attn.q.weight + _flat(g_k) @ attn.k.weight


def _flat(x: Tensor) -> Tensor:
    """`[B, heads, T, d_head] -> [B, T, d_model]`."""
    B, nh, T, dh = x.shape
    return x.transpose(1, 2).reshape(B, T, nh * dh)

"""What the transformer's node oracle and attribution are timed against (`bilens bench --kind
transformer`): captum's `LayerGradientXActivation` and `LayerFeatureAblation`, a per-node hook
loop that reruns the network, and a plain prefix-reusing batched loop, all on `ZSeq` (the same
network with an `nn.Identity` on every `z`, returning the target `log p(next token)` at the
last position).

captum is a bench dependency only, imported lazily (`competitors._captum`).
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer, TransformerRun
from bilens.core.sequence import SequenceTarget
from bilens.experiments.competitors import _captum


class ZSeq(nn.Module):
    """The transformer's forward (pre- or post-norm) with an `nn.Identity` on every `z`,
    returning `log p(next token)` at the last position; `nxt [B]` is each sequence's label
    (repeated when captum stacks perturbed copies of the batch)."""

    def __init__(self, model: BilinearTransformer, nxt: Tensor):
        super().__init__()
        self.model, self.nxt = model, nxt
        self.z = nn.ModuleList(nn.Identity() for _ in model.layers)

    def forward(self, tokens: Tensor) -> Tensor:
        m, alpha = self.model, self.model.config.attn_scale
        pre = m.config.norm_position == "pre"
        h = m.embed(tokens)
        for l, layer in enumerate(m.layers):
            if pre:
                h = h + alpha * layer.attn.fast(layer.attn_norm(h)[0])
                left, right, _ = layer.mlp(layer.mlp_norm(h)[0])
                h = h + self.z[l](left * right) @ layer.D.T
            else:
                h = layer.attn_norm(h + alpha * layer.attn.fast(h))[0]
                left, right, _ = layer.mlp(h)
                h = layer.mlp_norm(h + self.z[l](left * right) @ layer.D.T)[0]
        last = m.final_norm(h[:, -1])[0] if pre else h[:, -1]
        logp = m.head(last).log_softmax(-1)
        nxt = self.nxt.repeat(tokens.shape[0] // self.nxt.shape[0])
        return logp.gather(1, nxt[:, None])[:, 0]


def prefix_loop(model: BilinearTransformer, run: TransformerRun, tgt: SequenceTarget,
                b: Tensor, groups: list[tuple[int, int]]) -> dict[tuple[int, int], Tensor]:
    """The careful hand-written loop (pre-norm, sequence 0, target at its `p`): per `(l, t)`,
    `H` copies of the residual after layer `l` at positions `t..p` with `c_k D_k` added at
    `t`, the later layers run on those positions with the clean keys and values of the
    positions before `t` (concatenated, so they are recomputed), then the clean target
    subtracted. Returns `{(l, t): effects [H]}`."""
    if model.config.norm_position != "pre":
        raise ValueError("prefix_loop: written for pre-norm models")
    out = {}
    p = int(tgt.position[0])
    with torch.no_grad():
        f0 = run.logits[0, p].log_softmax(-1)[tgt.target.label[0]]
        for l, t in groups:
            c = b[0, l, t] - run.z[0, l, t]                                   # [H]
            h = run.resid[0, t:p + 1, 2 * l + 2].clone().expand(c.shape[0], -1, -1).clone()
            h[:, 0] += c[:, None] * model.layers[l].D.T
            for m in range(l + 1, model.config.n_layers):
                h = _suffix_layer(model, m, h, run.attn_in[0:1, m, :t], t, p)
            logp = model.head(model.final_norm(h[:, -1])[0]).log_softmax(-1)
            out[(l, t)] = logp[:, tgt.target.label[0]] - f0
    return out


def _suffix_layer(model: BilinearTransformer, m: int, h: Tensor, prefix: Tensor, t: int,
                  p: int) -> Tensor:
    """Layer `m` (pre-norm) on the copies `h [H, p-t+1, d]` of positions `t..p`, attending
    also to the clean attention inputs `prefix [1, t, d]` of the positions before `t`."""
    lm = model.layers[m]
    a = lm.attn_norm(h)[0]
    q, k, v = lm.attn.qkv(torch.cat([prefix.expand(h.shape[0], -1, -1), a], 1))
    scores = q[:, :, t:] @ k.transpose(-1, -2) / math.sqrt(lm.attn.d_head)
    mask = torch.ones(p + 1 - t, p + 1, dtype=torch.bool, device=h.device).tril(t)
    o = scores.masked_fill(~mask, -math.inf).softmax(-1) @ v
    h = h + model.config.attn_scale * lm.attn.o(o.transpose(1, 2).flatten(2))
    return h + lm.mlp(lm.mlp_norm(h)[0])[2] @ lm.D.T


def hook_loop(znet: ZSeq, one: Tensor, groups: list[tuple[int, int]]) -> Tensor:
    """The plain way: a forward hook zeroes one node, one full forward per node of `groups`
    (sequence `one [1, T]`); effects `[len(groups), H]`."""
    H = znet.model.config.d_hidden
    out = one.new_empty(len(groups), H, dtype=znet.model.dtype)
    with torch.no_grad():
        f0 = znet(one)
        for i, (l, t) in enumerate(groups):
            for k in range(H):
                def hook(_m, _i, z, t=t, k=k):
                    z = z.clone()
                    z[:, t, k] = 0.0
                    return z
                handle = znet.z[l].register_forward_hook(hook)
                out[i, k] = (znet(one) - f0)[0]
                handle.remove()
    return out


def captum_node_ablation(znet: ZSeq, one: Tensor, groups: list[tuple[int, int]], ppe: int
                         ) -> Tensor:
    """captum's `LayerFeatureAblation` on layer `l`'s `z` of sequence `one`, every node of
    `groups` (all in one layer) its own feature, the other nodes one extra feature (ablated
    once, discarded); effects `[len(groups), H]`."""
    LayerFeatureAblation, _ = _captum()
    (l,) = {l for l, _ in groups}
    H, T = znet.model.config.d_hidden, one.shape[1]
    mask = torch.full((1, T, H), len(groups) * H, dtype=torch.long, device=one.device)
    for i, (_, t) in enumerate(groups):
        mask[0, t] = torch.arange(H, device=one.device) + i * H
    attr = LayerFeatureAblation(znet, znet.z[l]).attribute(
        one, layer_mask=mask, layer_baselines=0.0, perturbations_per_eval=ppe)
    return -torch.stack([attr[0, t] for _, t in groups])         # captum: f(clean) - f(ablated)


def captum_gxa(znet: ZSeq, tokens: Tensor, per_layer: bool = False) -> Tensor:
    """captum's `LayerGradientXActivation` on every layer's `z`, `[B, L, T, H]`: one call
    over the list of layers, or (`per_layer`) one call per layer."""
    _, LayerGradientXActivation = _captum()
    if per_layer:
        return torch.stack([LayerGradientXActivation(znet, z).attribute(tokens)
                            for z in znet.z], 1)
    return torch.stack(list(LayerGradientXActivation(znet, list(znet.z)).attribute(tokens)), 1)


def oracle_flops(cfg: TransformerConfig, n: int, T: int) -> float:
    """2 x the multiply-adds of the oracle's products, every node of `n` sequences (target
    at the last position): per later layer over the `S = T - t` carried positions the k, v
    projections, and q, o, the MLP and the scores only where they are computed (every
    position, or in the last layer the query `p` alone)."""
    d, H, V = cfg.d_model, cfg.d_hidden, cfg.vocab_size
    total = 0.0
    for l in range(cfg.n_layers):
        for t in range(T):
            if l == cfg.n_layers - 1 and t != T - 1:
                continue                                     # exactly 0, not computed
            S = T - t
            per = 2 * d * V + 2 * d                                   # readout, entry
            for m in range(l + 1, cfg.n_layers):
                Sq = 1 if m == cfg.n_layers - 1 else S
                per += 2 * 2 * d * d * S + 2 * 2 * d * d * Sq          # k, v; q, o
                per += 2 * 3 * d * H * Sq                              # L, R, D
                per += 2 * 2 * Sq * T * d                              # scores, values
            total += n * H * per
    return total

"""The bilinear transformer of docs/spec.md §9, written as the SPEC writes it.

    h = E[x_t]
    pre-norm, per layer l:   a = N_{l,attn}(h);  h <- h + alpha * Attn_l(a)
                             u = N_{l,mlp}(h);   z = (L u) * (R u);  h <- h + D z
                             logits_t = W N_f(h)
    post-norm, per layer l:  h <- N_{l,attn}(h + alpha * Attn_l(h))
                             u = h;  z = (L u) * (R u);  h <- N_{l,mlp}(h + D z)
                             logits_t = W h

Norms are indexed in the order they run: norm `2l` is layer `l`'s attention norm, `2l+1`
its MLP norm, and `2L` the final norm (pre-norm only). `scale`, `mean` and `resid` of a
`TransformerRun` (and of an `Intervention`) carry that index on their norm axis.

A node is `(l, t, k)`: entry `k` of `z_l` at position `t`. `BilinearTransformer.run` keeps
every intermediate and takes an `Intervention`: frozen statistics, frozen attention
patterns, patched or offset `z`. `forward` computes the logits only, with
`scaled_dot_product_attention` (held equal to the explicit pattern of `run` by the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from bilens.core.config import TransformerConfig
from bilens.core.errors import BilensError
from bilens.core.models.base import ResidualModel
from bilens.core.models.intervention import NONE, Intervention
from bilens.core.norms import Norm


def rope_angles(n: int, d_head: int, base: float, dtype: torch.dtype,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """`cos(phi_t)`, `sin(phi_t)` `[n, d_head]`, `phi_t = cat(t*theta, t*theta)`,
    `theta_i = base^(-2i/d_head)`; computed in float64 on `device` (no host copy), returned
    in `dtype`."""
    theta = base ** (-2 * torch.arange(d_head // 2, dtype=torch.float64, device=device) / d_head)
    t = torch.arange(n, dtype=torch.float64, device=device)
    phi = torch.outer(t, theta).repeat(1, 2)                              # [n, d_head]
    return phi.cos().to(dtype), phi.sin().to(dtype)


def rope(v: Float[Tensor, "*b seq d_head"], cos: Tensor, sin: Tensor) -> Tensor:
    """`v cos(phi) + rot(v) sin(phi)`, `rot(v) = cat(-v[d/2:], v[:d/2])` (rotate-half)."""
    half = v.shape[-1] // 2
    rot = torch.cat((-v[..., half:], v[..., :half]), dim=-1)
    return v * cos + rot * sin


class Attention(nn.Module):
    """Causal softmax attention with rotary positions; no biases."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads, self.d_head, self.rope_base = cfg.n_heads, cfg.d_head, cfg.rope_base
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)        # W_Q
        self.k = nn.Linear(cfg.d_model, cfg.d_model, bias=False)        # W_K
        self.v = nn.Linear(cfg.d_model, cfg.d_model, bias=False)        # W_V
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)        # W_O

    def _heads(self, x: Tensor) -> Tensor:
        """`[B, T, d_model] -> [B, heads, T, d_head]`, head-major rows."""
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)

    def qkv(self, a: Float[Tensor, "batch seq d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated `q`, `k` and `v`, each `[B, heads, T, d_head]`."""
        q, k, v = self._heads(self.q(a)), self._heads(self.k(a)), self._heads(self.v(a))
        cos, sin = rope_angles(a.shape[1], self.d_head, self.rope_base, q.dtype, a.device)
        return rope(q, cos, sin), rope(k, cos, sin), v      # (q.dtype: bf16 under autocast)

    def forward(self, a: Float[Tensor, "batch seq d_model"], pattern: Tensor | None = None,
                *, detach: bool = False
                ) -> tuple[Float[Tensor, "batch seq d_model"], Float[Tensor, "batch head seq seq"]]:
        """`(Attn(a), pattern)`; a given `pattern` `[B, heads, T, T]` is used as it is, and
        `detach` holds the pattern computed here (a constant to autograd: `q`, `k` get no
        gradient)."""
        B, T, d = a.shape
        q, k, v = self.qkv(a)
        if pattern is None:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)        # [B, H, T, T]
            causal = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
            pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        if detach:
            pattern = pattern.detach()
        o = pattern @ v                                                     # [B, H, T, dh]
        return self.o(o.transpose(1, 2).reshape(B, T, d)), pattern        # W_O o_t

    def fast(self, a: Float[Tensor, "batch seq d_model"]) -> Float[Tensor, "batch seq d_model"]:
        """`Attn(a)` through `scaled_dot_product_attention` (no pattern kept)."""
        B, T, d = a.shape
        o = F.scaled_dot_product_attention(*self.qkv(a), is_causal=True)
        return self.o(o.transpose(1, 2).reshape(B, T, d))


class Block(nn.Module):
    """One layer: attention, then the bilinear MLP `z = (L u) * (R u)` written back as `D z`."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d, H, scale = cfg.d_model, cfg.d_hidden, 1 / math.sqrt(2 * cfg.n_layers)
        self.attn = Attention(cfg)
        self.attn_norm = Norm(cfg.norm, d, cfg.eps)
        self.mlp_norm = Norm(cfg.norm, d, cfg.eps)
        self.L = nn.Parameter(torch.randn(H, d) / math.sqrt(d))
        self.R = nn.Parameter(torch.randn(H, d) / math.sqrt(d))
        self.D = nn.Parameter(torch.randn(d, H) / math.sqrt(H) * scale)
        with torch.no_grad():
            for lin in (self.attn.q, self.attn.k, self.attn.v, self.attn.o):
                lin.weight.normal_(0, 1 / math.sqrt(d))
            self.attn.o.weight.mul_(scale)

    def mlp(self, u: Float[Tensor, "*vec d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """`(L u, R u, z)`, each `[*vec, d_hidden]`."""
        left, right = u @ self.L.T, u @ self.R.T
        return left, right, left * right


@dataclass
class TransformerRun:
    """Everything one forward pass computed, per layer and position.

    Norm index `i` (the `norm` axis): `2l` layer l's attention norm, `2l+1` its MLP norm,
    `2L` the final norm (pre-norm only). From `run(..., intermediates=False)`, `logits`,
    `pattern`, `attn_in`, `attn_out`, `u`, `left` and `right` are None.
    """

    logits: Float[Tensor, "batch seq vocab"] | None   # None: see `run(intermediates=False)`
    resid: Float[Tensor, "batch seq norm d_model"]       # what each norm normalizes
    scale: Float[Tensor, "batch seq norm"]               # s of each norm (1 for "none")
    mean: Float[Tensor, "batch seq norm"]                # mu (0 unless LayerNorm)
    pattern: Float[Tensor, "batch layer head seq seq"]   # softmax over t' <= t
    attn_in: Float[Tensor, "batch layer seq d_model"]    # a, the attention's input
    attn_out: Float[Tensor, "batch layer seq d_model"]   # alpha * Attn(a), what it writes
    u: Float[Tensor, "batch layer seq d_model"]          # the bilinear MLP's input
    left: Float[Tensor, "batch layer seq d_hidden"]      # L u
    right: Float[Tensor, "batch layer seq d_hidden"]     # R u
    z: Float[Tensor, "batch layer seq d_hidden"]         # (L u) * (R u), after any patch
    final: Float[Tensor, "batch seq d_model"]            # the vector the head reads


def check_tokens(tokens: Tensor, vocab_size: int, n_ctx: int, name: str = "tokens") -> Tensor:
    """Raise a `BilensError` unless `tokens` is an integer `[batch, seq]` tensor with
    `1 <= seq <= n_ctx` and every id in `[0, vocab_size)`; return it unchanged."""
    if not isinstance(tokens, Tensor):
        raise BilensError(f"{name}: expected a torch.Tensor [batch, seq] of token ids, got "
                          f"{type(tokens).__name__}; convert with torch.as_tensor(...)")
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        hint = " (add a batch axis: tokens.unsqueeze(0))" if tokens.ndim == 1 else ""
        raise BilensError(f"{name}: expected shape [batch, seq] with both > 0, got "
                          f"{list(tokens.shape)}{hint}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise BilensError(f"{name}: expected integer token ids, got {tokens.dtype}; "
                          f"use tokens.long()")
    if tokens.shape[1] > n_ctx:
        raise BilensError(f"{name}: sequence length {tokens.shape[1]} exceeds the model's "
                          f"n_ctx={n_ctx}; truncate to tokens[:, -{n_ctx}:]")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise BilensError(f"{name}: token id {bad} out of range [0, {vocab_size}); tokenize "
                          f"with this checkpoint's tokenizer")
    return tokens


class BilinearTransformer(ResidualModel):
    """Token embedding, `n_layers` x (attention, bilinear MLP), an untied head.

    Example:
        >>> cfg = TransformerConfig(vocab_size=50, n_ctx=16, d_model=8, d_hidden=16,
        ...                         n_layers=2, n_heads=2)
        >>> model = BilinearTransformer(cfg)
        >>> model(torch.randint(50, (3, 10))).shape
        torch.Size([3, 10, 50])
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)    # E [vocab, d_model]
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        if config.norm_position == "pre":
            self.final_norm = Norm(config.norm, config.d_model, config.eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # W
        nn.init.normal_(self.head.weight, 0, 1 / math.sqrt(config.d_model))
        self.tokenizer = None            # a `tokenizers.Tokenizer` once loaded or trained
        self.metadata: dict = {}

    def norm(self, i: int) -> Norm:
        """Norm `i` in run order: `2l` attention, `2l+1` MLP of layer `l`, `2L` final."""
        if i == 2 * self.config.n_layers:
            return self.final_norm
        layer = self.layers[i // 2]
        return layer.attn_norm if i % 2 == 0 else layer.mlp_norm

    def forward(self, tokens: Int[Tensor, "batch seq"], *,
                check: bool = True) -> Float[Tensor, "batch seq vocab"]:
        """The logits only, keeping no intermediates (`run` keeps them). `check=False` skips
        the tokens' range check, which reads them on the host (a sync on a GPU): for tokens
        checked already, or a forward recorded as a CUDA graph."""
        cfg = self.config
        if check:
            check_tokens(tokens, cfg.vocab_size, cfg.n_ctx)
        alpha, pre = cfg.attn_scale, cfg.norm_position == "pre"
        h = self.embed(tokens)                                          # h = E[x_t]
        for layer in self.layers:
            if pre:
                h = h + alpha * layer.attn.fast(layer.attn_norm(h)[0])
                h = h + layer.mlp(layer.mlp_norm(h)[0])[2] @ layer.D.T
            else:
                h = layer.attn_norm(h + alpha * layer.attn.fast(h))[0]
                h = layer.mlp_norm(h + layer.mlp(h)[2] @ layer.D.T)[0]
        return self.head(self.final_norm(h)[0] if pre else h)

    def run(self, tokens: Int[Tensor, "batch seq"], intervention: Intervention = NONE,
            *, check: bool = True, intermediates: bool = True,
            logits: bool = True) -> TransformerRun:
        """One forward pass returning every intermediate.

        Args:
            tokens: token ids `[B, T]`, `T <= n_ctx`.
            intervention: frozen statistics (`scale`, `mean` `[B, T, n_norms]`), frozen
                attention patterns (`pattern` `[B, n_layers, n_heads, T, T]`), patched `z`
                (`patch`, `{layer: (mask, values)}` on `z_l` `[B, T, d_hidden]`), an offset
                on `z` (`z_offset` `[B, n_layers, T, d_hidden]`) and on every norm's output
                (`norm_offset` `[B, T, n_norms, d_model]`); `detach_scale` /
                `detach_pattern` hold this run's own statistics / patterns for autograd;
                `tap` sees every `z` and norm output as it is used. The default changes
                nothing.
            check: validate the tokens and the intervention's shapes first.
            intermediates: False keeps only what a gradient needs from the run: `z`, the
                norms' `resid`, `scale`, `mean` and `final`; the other fields, the logits
                among them, are None (no stacking copies, no head: a caller that reads one
                position applies `self.head` to `final` there; and, unless the patterns
                are frozen or detached, attention through `scaled_dot_product_attention`).
            logits: False leaves `logits` None with the intermediates kept (the head at
                every position is a fifth of the issue model's forward; a caller that reads
                one position applies `self.head` to `final` there).

        Returns:
            A `TransformerRun`.
        """
        cfg, iv = self.config, intervention
        if check:
            self._check(tokens, iv)
        alpha, pre = cfg.attn_scale, cfg.norm_position == "pre"
        norms: list[tuple[Tensor, Tensor, Tensor]] = []                 # (r, s, mu) per norm
        kept: list[tuple[Tensor, ...]] = []          # (pattern, a, attn, u, L u, R u, z)
        h = self.embed(tokens)                                          # h = E[x_t]  [B,T,d]
        for l, layer in enumerate(self.layers):
            frozen = None if iv.pattern is None else iv.pattern[:, l]
            a = self._normalize(2 * l, h, iv, norms) if pre else h      # a = N_{l,attn}(h) | h
            if intermediates or frozen is not None or iv.detach_pattern:
                attn, pattern = layer.attn(a, frozen, detach=iv.detach_pattern)
            else:                                          # no pattern asked for: SDPA
                attn, pattern = layer.attn.fast(a), None
            attn = alpha * attn                                         # alpha * Attn_l(a)
            r = h + attn                                                # h + alpha Attn
            h = r if pre else self._normalize(2 * l, r, iv, norms)
            u = self._normalize(2 * l + 1, h, iv, norms) if pre else h  # u = N_{l,mlp}(h) | h
            left, right, z = layer.mlp(u)                               # z = (L u) * (R u)
            z = iv.edit_z(l, z)                                         # ablation, offset
            r = h + z @ layer.D.T                                       # h + D z
            h = r if pre else self._normalize(2 * l + 1, r, iv, norms)
            kept.append((pattern, a, attn, u, left, right, z))
        final = self._normalize(2 * cfg.n_layers, h, iv, norms) if pre else h
        per_layer = list(zip(*kept, strict=True))
        z = torch.stack(per_layer.pop(), 1)
        pattern, a, attn, u, left, right = (torch.stack(t, 1) if intermediates else None
                                            for t in per_layer)
        resid, scale, mean = (torch.stack(t, 2) for t in zip(*norms, strict=True))
        out = self.head(final) if intermediates and logits else None
        return TransformerRun(logits=out, resid=resid, scale=scale, mean=mean,
                              pattern=pattern, attn_in=a, attn_out=attn, u=u, left=left,
                              right=right, z=z, final=final)

    def _normalize(self, i: int, r: Tensor, iv: Intervention,
                   norms: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """`N_i(r)` under the intervention's statistics; `(r, s, mu)` appended to `norms`."""
        y, s, mu = self.norm(i)(r, *iv.stats(i), detach_scale=iv.detach_scale)
        offset = iv.norm_offset_at(i)
        if offset is not None:
            y = y + offset
        norms.append((r, s, mu))
        return iv.observe("norm", i, y)

    def _check(self, tokens: Tensor, iv: Intervention) -> None:
        cfg = self.config
        check_tokens(tokens, cfg.vocab_size, cfg.n_ctx)
        B, T = tokens.shape
        iv.check((B, T), cfg.n_norms)
        want = {"pattern": (B, cfg.n_layers, cfg.n_heads, T, T),
                "z_offset": (B, cfg.n_layers, T, cfg.d_hidden),
                "norm_offset": (B, T, cfg.n_norms, cfg.d_model)}
        for name, shape in want.items():
            value = getattr(iv, name)
            if isinstance(value, (tuple, list)):                # one tensor per layer / norm
                axis = 1 if name == "z_offset" else 2
                each = shape[:axis] + shape[axis + 1:]
                shapes = {tuple(v.shape) for v in value if v is not None}   # None: no offset
                if len(value) != shape[axis] or shapes - {each}:
                    raise BilensError(f"intervention.{name}: expected {shape[axis]} tensors "
                                      f"(or None) of shape {list(each)}, got {len(value)} of "
                                      f"shapes {sorted(shapes)}")
            elif value is not None and tuple(value.shape) != shape:
                raise BilensError(f"intervention.{name}: expected shape {list(shape)}, got "
                                  f"{list(value.shape)}; pass a clean run's `.{name}` "
                                  f"(or a tensor shaped like it)")

"""Exact node ablation in the bilinear transformer, by propagating the perturbation.

Ablating node `(l, t, k)` adds `delta = c D_l[:, k]` (`c = b - z_l[t, k]`) to the residual
at position `t` only. Layers before `l` and positions before `t` are untouched (the
attention is causal), so the clean run is the prefix; for a target read at `p` only
positions `t..p` of the later layers matter. One call handles one `(l, t)` with a batch of
sequences x a batch of channels, carrying `dh` `[b, K, S, d]` for positions `t..t+S-1`:

    norm:       N(r + dh) - N(r) = gamma (dh / s' + r (1/s' - 1/s))   (r, dh centred for LN)
                s'^2 = s^2 + (2 r.dh + |dh|^2) / d                     (frozen: gamma dh / s)
    attention:  dq, dk, dv linear (rotary is linear: rope(dq)); keys before t are clean
                dS = (dq.k + (q + dq).dk) / sqrt(d_head)
                dL = log sum_j P_j exp(dS_j) = log1p(sum_j P_j expm1(dS_j))
                dP = P expm1(dS - dL)                                   (frozen: 0)
                do = dP (v + dv) + P dv;  written back as (alpha W_O) do
    bilinear:   dz = a dR + dL (b + dR),  a = L u, b = R u clean, dL = L du, dR = R du
    head:       dlogits = W dfinal_p;  f's change by `target_delta` (stable log-softmax)

Nothing is recomputed and subtracted, so each effect is accurate relative to its own size.
The large products (`W_Q`, `W_K`, `W_V` as one, `W_O`, `[L; R]` as one, `D`, the head) run
through `Kernels.mm` (`backend="eager"` or `"compile"`): plain float32, or with
`precision="3xtf32"` three TF32 products of split halves on a GPU's tensor cores
(`_engine/steps.py`); or, with `backend="triton"`, as the Triton GEMMs of `triton_ops`
(3xTF32 or 3xFP16 halves split as they load, the MLP's `dz` made in the epilogue of
`[L; R]`'s product, the residual added in the epilogue of `W_O`'s and `D`'s), and the live
attention's change, rotary to `do`, as one kernel (`triton_attention`): float32-level
accurate either way. The elementwise steps (the norm change, the pattern change, rotary) are
plain functions (`sequence_steps.py`, rotary the model's, and the log-probability's change
`plan.logprob_delta`), compiled with symbolic shapes under `"compile"` and `"triton"`
(`Kernels.step`).
The last layer's node at `t` changes only position `t`'s residual: only `S = 1` is carried;
in the last layer only the query `p` is computed (reading the keys and values of `t..p`).
What depends on `p` and `t` alone is tabled once per plan, read per batch through views.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.ablation._engine.backend import fallback
from bilens.ablation._engine.plan import logprob_delta, target_delta
from bilens.ablation._engine.sequence_steps import norm_change, pattern_change
from bilens.ablation._engine.steps import Kernels
from bilens.core.models.transformer import BilinearTransformer, TransformerRun, rope, rope_angles
from bilens.core.sequence import SequenceTarget


class SequencePlan:
    """The clean quantities of one batch of sequences, reused for every `(l, t)`.

    Args:
        model: the transformer.
        run: its clean run on the batch.
        target: the resolved target.
        b: the baselines `[B, L, T, H]`.
        frozen_norm: hold every norm's `s` at its clean value (LayerNorm's centring kept).
        frozen_attn: hold every attention pattern at its clean value.
        precision: `"fp32"` or `"3xtf32"` (the split products; on a CPU they run, slower,
            as float32 products of the halves); with `backend="triton"` `"3xtf32"` or
            `"3xfp16"`.
        backend: `"eager"` (torch ops, cuBLAS or CPU BLAS products), `"compile"` (the same
            products, the elementwise steps `torch.compile`d by `Kernels.step`) or
            `"triton"` (the products as the Triton GEMMs of `triton_ops`, which split their
            factors as they load them, the bilinear step fused into the first MLP product;
            the steps compiled). As resolved by `backend.resolve_backend`.
    """

    def __init__(self, model: BilinearTransformer, run: TransformerRun, target: SequenceTarget,
                 b: Tensor, frozen_norm: bool = False, frozen_attn: bool = False,
                 precision: str = "fp32", backend: str = "eager"):
        if precision not in _PRECISIONS.get(backend, ()):
            raise ValueError(f"backend {backend!r}, precision {precision!r}: expected one of "
                             f"{_PRECISIONS}")
        cfg = model.config
        self.model, self.run, self.target, self.b = model, run, target, b
        self.frozen_norm, self.frozen_attn = frozen_norm, frozen_attn
        self.triton = self.fused_attention = self.fused_norm = None
        self.f16 = precision == "3xfp16"        # the Triton products' float16 halves
        if backend == "triton":
            from bilens.ablation._engine import triton_norm, triton_ops  # where Triton is
            from bilens.ablation._engine.triton_attention import attention_change

            self.triton, self.kernels = triton_ops, Kernels("fp32", "compile")  # its steps
            self.fused_attention, self.fused_norm = attention_change, triton_norm.norm_change

            def prepare(w: Tensor):                            # `[out, in]`, split
                return triton_ops.split_weight(w, precision == "3xfp16")
        else:
            self.kernels = Kernels(precision, backend)

            def prepare(w: Tensor):                            # `[in, out]`
                return self.kernels.weight(w.T)
        with torch.no_grad():
            self.w = [_LayerWeights(layer, prepare, fused_lr=self.triton is not None,
                                    alpha=cfg.attn_scale) for layer in model.layers]
            self.w_head = prepare(model.head.weight)
            self.DT = [layer.D.T.contiguous() for layer in model.layers]  # [H, d]: dh made
            # contiguous, as the norm kernel reads it (not laid out as D's transposed view)
        self.norm_step = self.kernels.step(norm_change)
        self.pattern_step = self.kernels.step(pattern_change)
        self.rope_step = self.kernels.step(rope)
        self.logprob_step = self.kernels.step(logprob_delta)  # a few passes over [b, K, V]
        self.pre = cfg.norm_position == "pre"
        self.L, self.T = cfg.n_layers, run.z.shape[2]
        with torch.no_grad():
            self.qkv = [layer.attn.qkv(run.attn_in[:, m]) for m, layer in enumerate(model.layers)]
        self.cos, self.sin = rope_angles(self.T, cfg.d_head, cfg.rope_base, run.z.dtype,
                                         run.z.device)
        self.centred = run.resid - run.mean[..., None]                    # [B, T, n_norms, d]
        self.last = target.position                                       # p per sequence [B]
        self.last_host = target.position.tolist()      # the same on the host: `end` syncs never
        self.arange = torch.arange(max(self.T, run.z.shape[0]), device=run.z.device)
        self.scratch: list[Tensor] = []                # zeroed one-element maxima (`zeroed`)
        if not target.every_position:                  # [T, B] per (t, sequence), and [B, V]
            t_ = self.arange[:self.T, None]
            self.query_of = (self.last[None] - t_).clamp_(min=0)               # p - t, or 0
            self.query_at = torch.maximum(self.last[None], t_)                 # p, or t
            self.unreached, self.missed_at_last = self.last[None] < t_, self.last[None] != t_
            at = (self.arange[:run.z.shape[0]], self.last)      # the clean run at p: [B, ...]
            self.logits_p, self.scale_p, self.centred_p = (x[at] for x in (
                run.logits, run.scale, self.centred))
            self.left_p, self.right_p = (x.transpose(1, 2)[at] for x in (run.left, run.right))

    def end(self, rows: slice) -> int:
        """The last position any of these rows' targets reads (from the host's copy: asking
        the device would wait for every kernel queued before, once per batch)."""
        return self.T - 1 if self.target.every_position else max(self.last_host[rows])

    def zeroed(self) -> Tensor | None:
        """A zeroed float32 element of this batch's scratch for a kernel's `max|.|` (None
        when used up: the kernel makes its own)."""
        return self.scratch.pop() if self.scratch else None

    def mm(self, x: Tensor, w, add: Tensor | None = None, xmax: Tensor | None = None
           ) -> Tensor:
        """`x @ W^T (+ add)` over the last axis of `x`, for a weight `W` as prepared in
        `__init__` (the Triton GEMM adds `add` in its epilogue; `xmax`: `max|x|`, if known)."""
        if self.triton is not None:
            out = self.triton.down(x.reshape(-1, x.shape[-1]).contiguous(), w, add=add,
                                   zmax=xmax)
            return out.view(*x.shape[:-1], w.hi.shape[0])
        out = self.kernels.mm(self.kernels.rows(x), w)
        return out if add is None else out.add_(add)

    @torch.no_grad()
    def effects(self, l: int, t: int | None, rows: slice, ks: Tensor | slice
                ) -> Float[Tensor, "b k"]:
        """`f(x | z_l[t, k] := b) - f(x)` for rows `rows` and channels `ks` of layer `l`;
        `t=None`: the feature, `z_l[t, k] := b` at every position `t` at once."""
        run = self.run
        if self.triton is not None and self.f16 and l < self.L - 1:   # the maxima: one fill
            scratch = torch.zeros(16 * (self.L - l), device=run.z.device, dtype=torch.float32)
            self.scratch = list(scratch[::4].split(1))  # 16-byte aligned, as Triton specializes
        if t is None:                      # every position 0..end perturbed, all carried
            S, t = self.end(rows) + 1, 0
            c = (self.b[rows, l, :S] - run.z[rows, l, :S])[..., ks]            # [b, S, K]
            dh = c.transpose(1, 2)[..., None] * self.DT[l][ks][None, :, None]  # [b, K, S, d]
        else:
            S = 1 if l == self.L - 1 else self.end(rows) - t + 1  # positions t..t+S-1
            c = (self.b[rows, l, t] - run.z[rows, l, t])[:, ks]                # [b, K]
            dh = (c[..., None] * self.DT[l][ks])[:, :, None]       # [b, K, 1, d]: at t alone
        pos: slice | Tensor = slice(t, t + S)          # every row's positions t..t+S-1
        if not self.pre:                                       # layer l's MLP norm sees it
            dh = self.norm_delta(2 * l + 1, dh, rows, slice(t, t + dh.shape[2]))
        for m in range(l + 1, self.L):
            query = None
            if m == self.L - 1 and not self.target.every_position:
                query = self.query_of[t, rows][:, None]    # [b, 1]: p - t (S - 1 at most)
            dh = self.layer_step(m, dh, rows, pos, query)
            if query is not None:
                pos = self.query_at[t, rows][:, None]                          # [b, 1]: p
        if self.pre:
            dh = self.norm_delta(2 * self.L, dh, rows, pos)
        return self.readout(dh, rows, pos, t)

    def norm_delta(self, i: int, dh: Tensor, rows: slice, pos: slice | Tensor) -> Tensor:
        """`N_i(r + dh) - N_i(r)` at positions `pos` (a slice, or per row `[b, S]`), without
        cancellation."""
        return self.norm_delta_max(i, dh, rows, pos, want_max=False)[0]

    def norm_delta_max(self, i: int, dh: Tensor, rows: slice, pos: slice | Tensor,
                       want_max: bool = True) -> tuple[Tensor, Tensor | None]:
        """`norm_delta`, and `max|.|` of it where the fused kernel makes it for the next
        product's float16 halves (a one-element tensor; else None, and the product makes
        its own)."""
        norm = self.model.norm(i)
        if norm.kind == "none":
            return dh, None
        if isinstance(pos, slice):
            s = self.run.scale[rows, pos, i][:, None, :, None]                 # [b, 1, S, 1]
            r = self.centred[rows, pos, i][:, None]                            # [b, 1, S, d]
        else:                      # the last layer's query: p (rows p misses are masked)
            s = self.scale_p[rows, i][:, None, None, None]
            r = self.centred_p[rows, i][:, None, None]
        if self.fused_norm is not None:
            top = want_max and self.f16
            return self.fused_norm(norm.kind == "layer", self.frozen_norm, dh, s, r,
                                   norm.weight.detach(), top=top,
                                   zeroed=self.zeroed() if top else None)
        return self.norm_step(norm.kind == "layer", self.frozen_norm, dh, s, r,
                              norm.weight.detach()), None

    def layer_step(self, m: int, dh: Tensor, rows: slice, pos: slice,
                   query: Tensor | None = None) -> Tensor:
        """The perturbation of the residual after layer `m`, given the one before it at
        positions `pos`; with `query` (`[b, 1]`, an index into `pos`) only at that position
        (the last layer, whose other positions no target reads). A `dh` of one position
        `[b, K, 1, d]` for several `pos` is the change at the first alone (0 at the others:
        layer `m` is the first after the ablated node's): the attention's input change is
        computed there."""
        first = dh.shape[2] < pos.stop - pos.start
        out_pos = pos if query is None else self.query_at[pos.start, rows][:, None]  # [b, 1]

        def plus_residual(da: Tensor, da_max: Tensor | None = None) -> Tensor:
            if not first:            # attention + dh, dh carried at `out_pos`: added in the
                return self.attention(m, da, rows, pos, out_pos, add=(     # W_O epilogue
                    dh if query is None else _positions(dh, query)),
                    da_max=da_max)
            out = self.attention(m, da, rows, pos, out_pos, da_max=da_max)
            if query is None:
                out[:, :, :1] += dh
                return out
            return out.add_(dh * (query == 0)[:, None, :, None])      # p = t, or 0

        if self.pre:
            dh = plus_residual(*self.norm_delta_max(2 * m, dh, rows,
                                                    slice(pos.start, pos.start + dh.shape[2])))
            du, du_max = self.norm_delta_max(2 * m + 1, dh, rows, out_pos)
            return self.mlp(m, du, rows, out_pos, dh, du_max)
        dh = plus_residual(dh)
        dh = self.norm_delta(2 * m, dh, rows, out_pos)
        return self.norm_delta(2 * m + 1, self.mlp(m, dh, rows, out_pos, dh), rows, out_pos)

    def mlp(self, m: int, du: Tensor, rows: slice, pos: slice | Tensor, add: Tensor,
            du_max: Tensor | None = None) -> Tensor:
        """`add + D dz`, `dz = a dR + dL (b + dR)` with the clean `a = L u`, `b = R u`
        (`du_max`: `max|du|`, if known)."""
        if isinstance(pos, slice):
            a, bb = self.run.left[rows, m, pos], self.run.right[rows, m, pos]  # [b, S, H]
        else:                      # the last layer's query: p (rows p misses are masked)
            a, bb = self.left_p[rows, m][:, None], self.right_p[rows, m][:, None]
        w = self.w[m]
        if self.triton is not None:              # rows (i, k, s): a and b at i * S + s
            b_, K, S, d = du.shape
            z, zmax = self.triton.lr_dz(du.reshape(-1, d), w.L, w.R, a.flatten(0, 1),
                                        bb.flatten(0, 1), K, inner=S, xmax=du_max,
                                        zeroed=self.zeroed() if self.f16 else None)
            return self.triton.down(z, w.D, add=add, zmax=zmax).view(b_, K, S, d)
        dL, dR = self.mm(du, w.lr).chunk(2, -1)                                # [b, K, S, H]
        return add + self.mm((bb[:, None] + dR).mul_(dL).addcmul_(a[:, None], dR), w.D)

    def attention(self, m: int, da: Tensor, rows: slice, pos: slice, qpos: slice | Tensor,
                  add: Tensor | None = None, da_max: Tensor | None = None) -> Tensor:
        """`alpha (Attn(a + da) - Attn(a)) (+ add)` at the query positions `qpos` (`pos`, or
        one per row `[b, 1]`), `da` given at the key positions `pos` = `t..t+S-1` (the
        pattern exact, or frozen); a `da` of one position is the change at `t` alone (0 at
        the others: the layer after the node's). `alpha` (`attn_scale`) is folded into
        `W_O` (`_LayerWeights`); `da_max`: `max|da|`, if known."""
        attn, w = self.model.layers[m].attn, self.w[m]
        b, K, Sd, d = da.shape                         # Sd = S, or 1: da at t alone
        nh, dh_ = attn.n_heads, attn.d_head
        t, J = pos.start, pos.stop                                             # keys 0..J-1
        every = isinstance(qpos, slice)                # the queries: all of t..J-1, or one
        qp = self.arange[t:J][None] if every else qpos                         # [1 | b, Sq]
        Sq = qp.shape[1]

        def heads(x: Tensor, n: int) -> Tensor:                                # [b, nh, K, n, dh]
            return x.view(b, K, n, nh, dh_).permute(0, 3, 1, 2, 4)

        def rows_at(x: Tensor) -> Tensor:                                      # [b, nh, 1, Sq, .]
            return (x[:, :, qpos] if every else
                    torch.take_along_dim(x, qpos[:, None, :, None], 2))[:, :, None]

        def by_keys(x: Tensor, y: Tensor) -> Tensor:   # [b, nh, K, Sq, n] @ [b, nh, n, m]:
            return (x.reshape(b, nh, K * Sq, -1) @ y).view(b, nh, K, Sq, -1)  # K in the rows

        q, k, v = (x[rows] for x in self.qkv[m])                               # [b, nh, T, dh]
        if self.fused_attention is not None and not self.frozen_attn:     # one Triton kernel
            dq, dk, dv = (x.view(b, K, x.shape[2], nh, dh_)
                          for x in self.qkv_change(m, da, qp, t, da_max))
            try:
                do, top = self.fused_attention(dq, dk, dv, q, k, v, self.run.pattern[rows, m],
                                               self.cos, self.sin, qp, t, J, amax=self.f16,
                                               zeroed=self.zeroed() if self.f16 else None)
            except self.triton.TRITON_ERRORS as err:   # e.g. out of shared memory: torch ops
                fallback(f"the fused attention kernel failed ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); the attention's "
                         "change runs as torch ops")
                self.fused_attention = None
            else:
                return self.mm(do, w.o, add, top)
        k, v = k[:, :, :J], v[:, :, :J]                                        # [b, nh, J, dh]
        P = rows_at(self.run.pattern[rows, m][..., :J])                        # [b, nh, 1, Sq, J]
        keys = slice(t, t + Sd)                                                # where dk, dv live
        if self.frozen_attn:
            do = P[..., keys] @ heads(self.mm(da, w.v, xmax=da_max), Sd)
        else:
            dq, dk, dv = self.qkv_change(m, da, qp, t, da_max)
            dq, dk, dv = heads(dq, dq.shape[2]), heads(dk, Sd), heads(dv, Sd)
            if Sd == 1:                            # dq: the query at t alone (0 elsewhere)
                dq = self.rope_step(dq, self.cos[t:t + 1], self.sin[t:t + 1])
                dq = (qp == t)[:, None, None, :, None] * dq                    # [b, nh, K, Sq, dh]
            else:
                cos, sin = self.cos[qpos], self.sin[qpos]                      # [Sq | b, 1, dh]
                if not every:
                    cos, sin = cos[:, None, None], sin[:, None, None]
                dq = self.rope_step(dq, cos, sin)
            dk = self.rope_step(dk, self.cos[keys], self.sin[keys])
            dS = by_keys(dq, k.transpose(-1, -2))                              # [b, nh, K, Sq, J]
            dS[..., keys] += (rows_at(q) + dq) @ dk.transpose(-1, -2)
            causal = self.arange[:J][None, None, :] <= qp[:, :, None]
            dS.mul_(1 / math.sqrt(dh_)).masked_fill_(~causal[:, None, None], 0.0)
            dP = self.pattern_step(P, dS)
            do = by_keys(dP, v)
            do += (dP[..., keys] + P[..., keys]) @ dv
        return self.mm(do.permute(0, 2, 3, 1, 4).reshape(b, K, Sq, d), w.o, add)

    def qkv_change(self, m: int, da: Tensor, qpos: Tensor, t: int,
                   da_max: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """`(dq, dk, dv)` before rotary, `[b, K, ., d]`: `dk`, `dv` wherever `da` is given,
        `dq` at the query positions `qpos` (or, for a `da` at `t` alone, at `t`): one product
        when they read the same rows of `da` (`da_max`: `max|da|`, if known)."""
        w, d, Sq = self.w[m], da.shape[-1], qpos.shape[1]
        if Sq == da.shape[2] or da.shape[2] == 1:
            return self.mm(da, w.qkv, xmax=da_max).split(d, -1)
        dk, dv = self.mm(da, w.kv, xmax=da_max).split(d, -1)
        return self.mm(_positions(da, qpos - t), w.q), dk, dv

    def readout(self, dfinal: Tensor, rows: slice, pos: slice | Tensor, t: int) -> Tensor:
        """The target's change from the perturbation of the vector the head reads at the
        positions `pos` (a slice, or per row `[b, S]`), for nodes at `t` (features: 0)."""
        tgt = self.target
        b, K, S, _ = dfinal.shape
        if tgt.every_position:                                                 # mean-logprob
            dlogits = self.mm(dfinal, self.w_head).transpose(1, 2).flatten(0, 1)  # [b*S, K, V]
            label = tgt.next_tokens[rows, pos].flatten()          # every position: a slice
            out = self.logprob_step(label, self.run.logits[rows, pos].flatten(0, 1), dlogits)
            return out.view(b, S, K).sum(1) / self.T
        missed = None                                  # rows whose p the nodes cannot reach
        if isinstance(pos, slice) and S > 1:           # a last-layer feature, every position
            at_p = dfinal[self.arange[:b], :, self.last[rows] - pos.start]         # [b, K, d]
        else:             # p alone (the last layer's query; t where p < t), or its node's t
            at_p = dfinal[:, :, 0]
            missed = (self.missed_at_last if isinstance(pos, slice) else self.unreached)[t, rows]
        out = target_delta(tgt.target.select(rows), self.logits_p[rows],
                           self.mm(at_p, self.w_head), self.logprob_step)        # [b, K]
        return out if missed is None else out.masked_fill_(missed[:, None], 0.0)


def _positions(x: Tensor, index: Tensor) -> Tensor:
    """`x[i, k, index[i, s]]`, `x [b, K, S, d]`, `index [b, Sq]`: one gather (`take_along_dim`
    adds a kernel for negative indices)."""
    return x.gather(2, index[:, None, :, None].expand(*x.shape[:2], index.shape[1], x.shape[3]))


_PRECISIONS = {"eager": ("fp32", "3xtf32"), "compile": ("fp32", "3xtf32"),
               "triton": ("3xtf32", "3xfp16")}


class _LayerWeights:
    """One layer's weights `[out, in]`, each prepared once by `prepare`: `qkv` is
    `[W_Q; W_K; W_V]`, `kv` `[W_K; W_V]`; `o` is `alpha W_O` (`attn_scale` folded in); `lr`
    `[L; R]`, or (`fused_lr`) `L` and `R` apart."""

    def __init__(self, layer, prepare, fused_lr: bool, alpha: float):
        attn = layer.attn
        Wq, Wk, Wv = (x.weight for x in (attn.q, attn.k, attn.v))
        mlp = {"L": layer.L, "R": layer.R} if fused_lr else {"lr": torch.cat([layer.L, layer.R])}
        for name, w in {"qkv": torch.cat([Wq, Wk, Wv]), "kv": torch.cat([Wk, Wv]), "q": Wq,
                        "v": Wv, "o": alpha * attn.o.weight, "D": layer.D, **mlp}.items():
            setattr(self, name, prepare(w))

"""Exact ablation effects by propagating the *perturbation* from the clean run.

Ablating channel `(l, k)` adds `c * D_l[:, k]` to the residual (`c = b - z_{l,k}`); layers
before `l` are untouched, so the clean run is the prefix. Through the suffix we carry the
difference from the clean run, never "ablated state minus clean state", so each effect
is accurate relative to its own size:

    norm (LN on centred vectors):  s'^2 = s^2 + (2 r.d + |d|^2) / d_model
                                   N(r + d) - N(r) = gamma * (d / s' - r (s' - s) / (s s'))
                                   s' - s = (s'^2 - s^2) / (s' + s)
    bilinear layer:                dz = a * db + da * b + da * db     (a = L u, b = R u)

Closed forms. The norm right after the ablated layer sees a rank-1 perturbation, so its
output is `alpha * P[:, k] + beta * q` with `P = gamma * D~` (D~: columns centred for
LayerNorm) and `q = gamma * r~`: the next layer's `L du` and `R du` come from the
precomputed `L_{l+1} P` and per-input `L_{l+1} q`, with no d_model x d_hidden matmul per
ablation. When the head follows directly (the last layer), every channel costs a few
scalars: `r~ . D~[:, k]`, `|D~[:, k]|^2` and `w . P[:, k]` with `w = W^T u`.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.targets import Target

if TYPE_CHECKING:
    from bilens.model import BilinearNet, Run


def matmul(a: Tensor, b: Tensor, precision: str = "fp32") -> Tensor:
    """`a @ b`; `precision="3xtf32"` splits both factors into TF32 high and low parts and
    sums three TF32 tensor-core products (float32-level accuracy, ~2x faster on GPUs)."""
    if precision == "fp32" or a.dtype != torch.float32:
        return a @ b
    a_hi, a_lo = _split_tf32(a)
    b_hi, b_lo = _split_tf32(b)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        out = a_hi @ b_lo
        out += a_lo @ b_hi
        out += a_hi @ b_hi
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return out


def _split_tf32(a: Tensor) -> tuple[Tensor, Tensor]:
    """`a = hi + lo` with `hi` exactly representable in TF32 (10 mantissa bits, rounded)."""
    bits = a.view(torch.int32)
    hi = ((bits + 0x1000) & -0x2000).view(torch.float32)           # round to 10 mantissa bits
    return hi, a - hi


@dataclass
class _NormStats:
    """One norm of the clean run, for a chunk of inputs."""

    kind: str
    gamma: Tensor | None            # [d]
    r: Tensor                       # [Bc, d]  centred input (LayerNorm) or input
    s: Tensor                       # [Bc]


def norm_delta(
    st: _NormStats, delta: Float[Tensor, "batch k d"], frozen: bool,
) -> Float[Tensor, "batch k d"]:
    """`N(r + delta) - N(r)` without cancellation (LayerNorm's beta cancels)."""
    if st.kind == "none":
        return delta
    if st.kind == "layer":
        delta = delta - delta.mean(-1, keepdim=True)
    s = st.s[:, None]                                                        # [Bc, 1]
    if frozen:
        return st.gamma * (delta / s[..., None])
    d = delta.shape[-1]
    rd = torch.einsum("bkd,bd->bk", delta, st.r)                             # [Bc, K]
    ds2 = (2 * rd + delta.pow(2).sum(-1)) / d                                # s'^2 - s^2
    s_new = (s * s + ds2).sqrt()
    beta = -ds2 / ((s_new + s) * s * s_new)                                  # -(s'-s)/(s s')
    return st.gamma * (delta / s_new[..., None] + beta[..., None] * st.r[:, None, :])


def target_delta(
    tgt: Target, logits: Float[Tensor, "batch n_out"], dlogits: Float[Tensor, "batch k n_out"],
) -> Float[Tensor, "batch k"]:
    """`f(logits + dlogits) - f(logits)` for a linear or log-probability target."""
    if tgt.is_linear:
        return torch.einsum("bko,bo->bk", dlogits, tgt.direction.to(dlogits.dtype))
    y = tgt.label.view(-1, 1, 1).expand(-1, dlogits.shape[1], 1)
    logp = logits.log_softmax(-1)[:, None, :]                                # [Bc, 1, n_out]
    # LSE(logits + dl) - LSE(logits) = log sum_i p_i exp(dl_i), accurate for small and large dl
    small = torch.log1p((logp.exp() * torch.expm1(dlogits.clamp(max=1.0))).sum(-1))
    large = torch.logsumexp(logp + dlogits, -1)
    lse = torch.where(dlogits.abs().amax(-1) < 0.5, small, large)
    return dlogits.gather(-1, y).squeeze(-1) - lse


class Plan:
    """Per-model precomputation (weights only), reused for every chunk of inputs.

    Args:
        model: the network.
        frozen: hold every norm's `s` at its clean value.
        precision: `"fp32"` or `"3xtf32"` for the large matmuls.
    """

    def __init__(self, model: BilinearNet, frozen: bool = False, precision: str = "fp32"):
        cfg = model.config
        self.cfg, self.frozen, self.precision = cfg, frozen, precision
        self.post = cfg.norm_position == "post"
        self.n_layers = cfg.n_layers
        self.W = model.head.weight.detach()                                  # [n_out, d]
        self.L = [layer.L.detach() for layer in model.layers]                # [H, d]
        self.R = [layer.R.detach() for layer in model.layers]
        self.D = [layer.D.detach() for layer in model.layers]                # [d, H]
        self.LRt = [torch.cat([Lm, Rm]).T.contiguous()                     # [d, 2H]
                    for Lm, Rm in zip(self.L, self.R, strict=True)]
        self.Dt = [Dm.T.contiguous() for Dm in self.D]                       # [H, d]
        self.gamma = [None if cfg.norm == "none" else model.norm(i).weight.detach()
                      for i in range(cfg.n_norms)]
        self.Dc, self.nD, self.Pt, self.LPt, self.RPt, self.WP = [], [], [], [], [], []
        for l in range(cfg.n_layers):
            j = self.first_norm(l)
            Dc = self.D[l]
            if cfg.norm == "layer":
                Dc = Dc - Dc.mean(0, keepdim=True)                           # centred columns
            P = Dc if cfg.norm == "none" else self.gamma[j][:, None] * Dc    # [d, H]
            self.Dc.append(Dc)
            self.nD.append(Dc.pow(2).sum(0))                                 # |D~_k|^2   [H]
            self.Pt.append(P.T.contiguous())                                 # [H, d]
            if l + 1 < cfg.n_layers:
                self.LPt.append((self.L[l + 1] @ P).T.contiguous())          # [H_k, H]
                self.RPt.append((self.R[l + 1] @ P).T.contiguous())
                self.WP.append(None)
            else:
                self.LPt.append(None)
                self.RPt.append(None)
                self.WP.append(self.W @ P)                                   # [n_out, H]

    def first_norm(self, l: int) -> int:
        """The norm that first sees layer `l`'s write to the residual."""
        return l if self.post else l + 1

    def stats(self, run: Run, i: int) -> _NormStats:
        """Norm `i`'s clean statistics for the inputs of `run`."""
        r = run.resid[:, i]
        if self.cfg.norm == "layer":
            r = r - run.mean[:, i, None]
        return _NormStats(self.cfg.norm, self.gamma[i], r, run.scale[:, i])

    def work_bytes(self) -> int:
        """Bytes of working memory per ablation (one input x one channel)."""
        item = torch.finfo(self.W.dtype).bits // 8
        return (6 * self.cfg.d_hidden + 6 * self.cfg.d_model + 2 * self.W.shape[0]) * item

    def effects(
        self, run: Run, tgt: Target, c: Float[Tensor, "batch k"], l: int, ks: Tensor,
    ) -> Float[Tensor, "batch k"]:
        """Effects of ablating channels `ks` of layer `l` by `c = b - z` on a chunk.

        Args:
            run: the clean run of the chunk's inputs.
            tgt: the chunk's target.
            c: `b - z_{l,k}` for each input and selected channel `[Bc, K]`.
            l: the ablated layer.
            ks: the selected channels `[K]` (long).

        Returns:
            `f(ablated) - f(clean)`, `[Bc, K]`.
        """
        j = self.first_norm(l)
        st = self.stats(run, j)
        d = st.r.shape[-1]
        # rank-1 perturbation c D_l[:, k] through norm j: du = alpha P_k + beta q
        if st.kind == "none" or self.frozen:
            alpha, beta = c / st.s[:, None], torch.zeros_like(c)
            q = st.r if st.kind == "none" else st.gamma * st.r
        else:
            rD = st.r @ self.Dc[l][:, ks]                                        # [Bc, K]
            ds2 = (2 * c * rD + c * c * self.nD[l][ks]) / d
            s = st.s[:, None]
            s_new = (s * s + ds2).sqrt()
            alpha, beta = c / s_new, -ds2 / ((s_new + s) * s * s_new)
            q = st.gamma * st.r                                                  # [Bc, d]
        if l + 1 == self.n_layers:                                               # head next
            if tgt.is_linear:
                w = tgt.direction.to(q.dtype) @ self.W                           # [Bc, d]
                return alpha * (w @ self.Pt[l][ks].T) + beta * (w * q).sum(-1, keepdim=True)
            dlogits = (alpha[..., None] * self.WP[l][:, ks].T
                       + beta[..., None] * (q @ self.W.T)[:, None, :])
            return target_delta(tgt, run.logits, dlogits)
        m = l + 1
        ql, qr = (q @ self.LRt[m]).chunk(2, dim=-1)                              # [Bc, H]
        dleft = alpha[..., None] * self.LPt[l][ks] + beta[..., None] * ql[:, None, :]
        dright = alpha[..., None] * self.RPt[l][ks] + beta[..., None] * qr[:, None, :]
        dz = self._dz(run, m, dleft, dright)
        Ddz = self._mm(dz, self.Dt[m])                                           # [Bc, K, d]
        if self.post:
            delta = Ddz + alpha[..., None] * self.Pt[l][ks] + beta[..., None] * q[:, None, :]
        else:
            delta = Ddz + c[..., None] * self.Dt[l][ks]
        for m in range(l + 2, self.n_layers):
            if self.post:
                du = norm_delta(self.stats(run, m - 1), delta, self.frozen)
                delta = du
            else:
                du = norm_delta(self.stats(run, m), delta, self.frozen)
            dleft, dright = self._mm(du, self.LRt[m]).chunk(2, dim=-1)
            delta = delta + self._mm(self._dz(run, m, dleft, dright), self.Dt[m])
        last = self.n_layers - 1 if self.post else self.n_layers
        dfinal = norm_delta(self.stats(run, last), delta, self.frozen)
        return target_delta(tgt, run.logits, dfinal @ self.W.T)

    def _mm(self, a: Tensor, b: Tensor) -> Tensor:
        return matmul(a.reshape(-1, a.shape[-1]), b, self.precision).view(*a.shape[:-1], -1)

    @staticmethod
    def _dz(run: Run, m: int, dleft: Tensor, dright: Tensor) -> Tensor:
        """`a * db + da * (b + db)` for layer `m` (clean `a = L u`, `b = R u`)."""
        a, b = run.left[:, m, None, :], run.right[:, m, None, :]
        return torch.addcmul(a * dright, dleft, b + dright)

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
scalars: `r~ . D~[:, k]`, `|D~[:, k]|^2` and `w . P[:, k]` with `w = W^T u`. With frozen
norms the last layer's `dz` reaches the logits linearly, through the precomputed
`W gamma D~`, so its `D dz` matmul is skipped too.

`Plan.effects` does one chunk (some inputs x some channels of one layer); the elementwise
steps and the matmuls' precision live in `bilens.fused`; `bilens.ablation` chunks and
validates.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.ablation._engine.backend import fallback, triton_available
from bilens.ablation._engine.steps import Kernels
from bilens.core.norms import inverse_scale_change, perturbed_scale
from bilens.core.targets import Target

if TYPE_CHECKING:
    from bilens.core.models.mlp import BilinearNet, Run


def target_delta(
    tgt: Target, logits: Float[Tensor, "batch n_out"], dlogits: Float[Tensor, "batch k n_out"],
    logprob=None,
) -> Float[Tensor, "batch k"]:
    """`f(logits + dlogits) - f(logits)` for a linear or log-probability target; `logprob`:
    `logprob_delta` as the caller runs it (e.g. compiled), by default itself."""
    if tgt.is_linear:
        return torch.einsum("bko,bo->bk", dlogits, tgt.direction.to(dlogits.dtype))
    return (logprob or logprob_delta)(tgt.label, logits, dlogits)


def logprob_delta(label: Tensor, logits: Float[Tensor, "batch n_out"],
                  dlogits: Float[Tensor, "batch k n_out"]) -> Float[Tensor, "batch k"]:
    """`log softmax(logits + dlogits)[label] - log softmax(logits)[label]`, accurate relative
    to its own size (tensors only, so that a backend can compile it as one step)."""
    y = label.view(-1, 1, 1).expand(-1, dlogits.shape[1], 1)
    logp = logits.log_softmax(-1)[:, None, :]                                # [Bc, 1, n_out]
    # LSE(logits + dl) - LSE(logits) = log sum_i p_i exp(dl_i), accurate for small and large dl
    small = torch.log1p((logp.exp() * torch.expm1(dlogits.clamp(max=1.0))).sum(-1))
    large = torch.logsumexp(logp + dlogits, -1)
    lse = torch.where(dlogits.abs().amax(-1) < 0.5, small, large)
    return dlogits.gather(-1, y).squeeze(-1) - lse


def _triton_unusable(model: BilinearNet) -> str | None:
    """Why the Triton GEMMs cannot run this model, or None when they can."""
    if not triton_available():
        return "Triton is not installed"
    if model.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"they run on CUDA tensors only, the model is on {model.device.type}"
    return None


def triton_errors() -> tuple[type[Exception], ...]:
    """The errors a Triton kernel raises when it cannot compile or launch."""
    from bilens.ablation._engine.triton_ops import TRITON_ERRORS
    return TRITON_ERRORS


class Plan:
    """Per-model precomputation (weights only), reused for every chunk of inputs.

    Args:
        model: the network.
        frozen: hold every norm's `s` at its clean value.
        precision: `"fp32"`, `"3xtf32"` or `"3xfp16"` for the large matmuls.
        backend: `"eager"`, `"compile"` or `"triton"` (see `backend.resolve_backend`).
        compile_steps: see `Kernels`.
    """

    def __init__(self, model: BilinearNet, frozen: bool = False, precision: str = "fp32",
                 backend: str = "eager", compile_steps: bool | None = None):
        cfg = model.config
        self.cfg, self.frozen, self.precision = cfg, frozen, precision
        self.compile_steps = backend != "eager" if compile_steps is None else compile_steps
        self.k = Kernels(precision, backend, self.compile_steps)
        self.triton_error: str | None = None
        self.post = cfg.norm_position == "post"
        self.n_layers = cfg.n_layers
        self.W = model.head.weight.detach()                                  # [n_out, d]
        self.L = [layer.L.detach() for layer in model.layers]                # [H, d]
        self.R = [layer.R.detach() for layer in model.layers]
        self.D = [layer.D.detach() for layer in model.layers]                # [d, H]
        self.LRt = [torch.cat([Lm, Rm]).T.contiguous()                     # [d, 2H]
                    for Lm, Rm in zip(self.L, self.R, strict=True)]
        self.Dt = [Dm.T.contiguous() for Dm in self.D]                       # [H, d]
        self.LRw = [self.k.weight(w) for w in self.LRt]                      # matmul-ready
        self.Dw = [self.k.weight(w) for w in self.Dt]
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
        # frozen norms: the last layer's write reaches the logits linearly, so skip its D
        last = cfg.n_norms - 1
        self.WG = self.W if cfg.norm == "none" else self.W * self.gamma[last]  # [n_out, d]
        self.WPw = self.k.weight(self.WP[-1].T)                              # [H, n_out]
        if self.k.triton:
            reason = _triton_unusable(model)
            if reason is None:
                self._prepare_triton()
            else:
                self._drop_triton(reason)

    def _prepare_triton(self) -> None:
        """The Triton GEMMs' weights, split once."""
        from bilens.ablation._engine.triton_ops import split_weight
        f16 = self.k.f16
        self.Tlr = [(split_weight(Lm, f16), split_weight(Rm, f16))           # [H, d] halves
                    for Lm, Rm in zip(self.L, self.R, strict=True)]
        self.Td = [split_weight(Dm, f16) for Dm in self.D]                   # [d, H] halves
        self.LPmax = [None if lp is None else (lp.abs().amax(-1), rp.abs().amax(-1))
                      for lp, rp in zip(self.LPt, self.RPt, strict=True)]
        self.WPw = self.WP[-1].T.contiguous()                                # head: plain fp32

    def first_norm(self, l: int) -> int:
        """The norm that first sees layer `l`'s write to the residual."""
        return l if self.post else l + 1

    def stats(self, run: Run, i: int) -> tuple[Tensor, Tensor]:
        """Norm `i`'s clean input (centred for LayerNorm) `[Bc, d]` and `s` `[Bc]`."""
        r = run.resid[:, i]
        if self.cfg.norm == "layer":
            r = r - run.mean[:, i, None]
        return r, run.scale[:, i]

    def norm_delta(self, run: Run, i: int, delta: Tensor) -> Tensor:
        """`N_i(r + delta) - N_i(r)` for norm `i` of the clean run."""
        r, s = self.stats(run, i)
        return self.k.norm(self.cfg.norm, self.frozen, delta, r, s, self.gamma[i])

    def work_bytes(self) -> int:
        """Bytes of working memory per ablation (one input x one channel); measured on the
        H200: 4.3 GB peak for a 4 GiB budget in float32, and the 3xTF32 halves
        (`[hi | lo]` of `dz` and of `du`) need a third more. The Triton GEMMs keep one
        `dz [H]` and a few `[d]` rows per ablation: 4.8-5.1 GB peak, of which ~1.3 GB is
        the clean run and the result."""
        item = torch.finfo(self.W.dtype).bits // 8
        h, d = (2, 5) if self.k.triton else (8, 9) if self.k.split else (6, 6)
        return (h * self.cfg.d_hidden + d * self.cfg.d_model + 2 * self.W.shape[0]) * item

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
        j, kind = self.first_norm(l), self.cfg.norm
        r, s_j = self.stats(run, j)
        gamma = self.gamma[j]
        # rank-1 perturbation c D_l[:, k] through norm j: du = alpha P_k + beta q
        if kind == "none" or self.frozen:
            alpha, beta = c / s_j[:, None], torch.zeros_like(c)
            q = r if kind == "none" else gamma * r
        else:
            rD = r @ self.Dc[l][:, ks]                                           # [Bc, K]
            s = s_j[:, None]
            s_new, ds2 = perturbed_scale(s, c * rD, c * c * self.nD[l][ks], r.shape[-1])
            alpha, beta = c / s_new, inverse_scale_change(s, s_new, ds2)
            q = gamma * r                                                        # [Bc, d]
        if l + 1 == self.n_layers:                                               # head next
            if tgt.is_linear:
                w = tgt.direction.to(q.dtype) @ self.W                           # [Bc, d]
                return alpha * (w @ self.Pt[l][ks].T) + beta * (w * q).sum(-1, keepdim=True)
            dlogits = (alpha[..., None] * self.WP[l][:, ks].T
                       + beta[..., None] * (q @ self.W.T)[:, None, :])
            return target_delta(tgt, run.logits, dlogits)
        m = l + 1
        ql, qr = (q @ self.LRt[m]).chunk(2, dim=-1)                              # [Bc, H]
        # (frozen norms with the head right after layer m: the path below, whose entry `dz`
        # goes straight to `_frozen_head`, has no large product left for Triton to run)
        if self.k.triton and not (self.frozen and m + 1 == self.n_layers):
            try:
                return self._suffix_triton(run, tgt, c, alpha, beta, q, ql, qr, l, ks)
            except triton_errors() as err:        # a kernel that cannot compile or launch
                self._drop_triton(f"{type(err).__name__}: {str(err)[:300]}")
        dz = self.k.entry(alpha, beta, self.LPt[l][ks], self.RPt[l][ks], ql, qr,
                          run.left[:, m], run.right[:, m])                       # [Bc, K, H]
        if self.post:                                                            # r' = du + D dz
            du = alpha[..., None] * self.Pt[l][ks] + beta[..., None] * q[:, None, :]
        else:                                                                    # h' = c D_k + D dz
            du = c[..., None] * self.Dt[l][ks]
        # invariant: `dz` is layer m-1's perturbation and `du` what the residual already
        # carries, so layer m-1 writes `delta = du + D_{m-1} dz`; m == n_layers is the head
        for m in range(l + 2, self.n_layers + 1):
            if self.frozen and m == self.n_layers:
                return self._frozen_head(run, tgt, du, dz)
            delta = self.k.mm(dz, self.Dw[m - 1], add=du)                        # [Bc, K, d]
            if m == self.n_layers:
                break
            i = m - 1 if self.post else m                                        # norm before m
            r, s = self.stats(run, i)
            du, rows = self.k.norm_rows(self.cfg.norm, self.frozen, delta, r, s, self.gamma[i])
            lr = self.k.mm(rows, self.LRw[m])                                    # [Bc, K, 2H]
            dz = self.k.layer(lr, run.left[:, m], run.right[:, m])
            if not self.post:
                du = delta                                                       # residual keeps it
        dfinal = self.norm_delta(run, self.cfg.n_norms - 1, delta)
        return target_delta(tgt, run.logits, dfinal @ self.W.T)

    def _drop_triton(self, reason: str) -> None:
        """Fall back from the Triton GEMMs to 3xTF32 cuBLAS (same accuracy), saying why."""
        self.triton_error = reason
        fallback(f"the Triton GEMMs failed ({reason}); exhaustive ablation continues with "
                 f"cuBLAS")
        self.k = Kernels(self.precision, "compile" if self.compile_steps else "eager")
        self.WPw = self.k.weight(self.WP[-1].T)     # LRw, Dw were split for cuBLAS already

    def _suffix_triton(self, run: Run, tgt: Target, c: Tensor, alpha: Tensor, beta: Tensor,
                       q: Tensor, ql: Tensor, qr: Tensor, l: int, ks: Tensor | slice) -> Tensor:
        """`effects` past the closed forms with the Triton GEMMs: the entry layer's `dz` is
        made inside its `D` matmul, each full layer is `lr_dz` then `down`."""
        from bilens.ablation._engine import triton_ops as T
        if isinstance(ks, slice):
            ks = torch.arange(self.cfg.d_hidden, device=c.device)[ks]
        m, K, d = l + 1, c.shape[1], self.cfg.d_model
        a, b = run.left[:, m], run.right[:, m]
        # what the residual itself carries: alpha P_k + beta q (post) or c D_k (pre)
        own = (alpha, self.Pt[l], beta, q) if self.post else (c, self.Dt[l], None, None)
        delta = T.entry_down(alpha, beta, ks, self.LPt[l], self.RPt[l], ql, qr, a, b,
                             self.Td[m], *own, lp_max=self.LPmax[l])            # [Bc K, d]
        for m in range(l + 2, self.n_layers):
            i = m - 1 if self.post else m                                        # norm before m
            r, s = self.stats(run, i)
            rows = self.k.norm(self.cfg.norm, self.frozen, delta.view(-1, K, d), r, s,
                               self.gamma[i])
            dz, zmax = T.lr_dz(rows, *self.Tlr[m], run.left[:, m], run.right[:, m], K)
            du = rows if self.post else delta                                    # residual's
            if self.frozen and m + 1 == self.n_layers:
                return self._frozen_head(run, tgt, du.view(-1, K, d), dz.view(-1, K, dz.shape[-1]))
            delta = T.down(dz, self.Td[m], add=du, zmax=zmax)                   # [Bc K, d]
        dfinal = self.norm_delta(run, self.cfg.n_norms - 1, delta.view(-1, K, d))
        return target_delta(tgt, run.logits, dfinal @ self.W.T)

    def _frozen_head(self, run: Run, tgt: Target, base: Tensor, dz: Tensor) -> Tensor:
        """Frozen norms: `dlogits = W gamma (base + D dz)~ / s` for the last layer's `dz`
        (`~`: centred for LayerNorm), with `W gamma D~` precomputed: no `D dz` matmul."""
        r, s = self.stats(run, self.cfg.n_norms - 1)
        if self.cfg.norm == "layer":
            base = base - base.mean(-1, keepdim=True)
        if self.k.triton:                                    # dz comes whole, in float32
            dlogits = base @ self.WG.T + dz @ self.WPw
        else:
            dlogits = self.k.mm(dz, self.WPw, add=base @ self.WG.T)
        return target_delta(tgt, run.logits, dlogits / s[:, None, None])


"""How faithful a weight-based decomposition is on data, in the real network.

Per layer `l` and target, with `c_l(x) = factor(x) * u^T Q u` the layer's direct
contribution (its input's statistic factor times the quadratic form, docs/spec.md §10) and
`c_l^k(x) = factor(x) * sum_{i<k} lambda_i (v_i . u)^2` its top-k truncation:

- `recon_ne[k] = sum_x |c_l^k - c_l| / sum_x |c_l|`: how much of the direct contribution
  the top-k eigencomponents miss (0 is perfect; the rank-d_model truncation is exact).
- `direct_share = <dc_l, df> / <df, df>` over the inputs, with `d` the change from the
  reference input (the mean input, or zero): the share of the target's change that layer
  `l`'s direct path carries, in the least-squares sense. Shares of additive parts add up:
  in a network without norms the embedding's and every layer's direct shares sum to 1.

For the last layer, whose direct path is its whole path to the logits:

- the layer's output along `w` is replaced by its rank-k truncation, i.e. `D z` moves by
  `(q^k - q) w / |w|^2` (`q = u^T Q u`): with every statistic frozen the target moves by
  exactly `c^k - c` (the **frozen** prediction); in the real network (every norm live) by
  whatever it does. `frozen_ne`, `live_ne`: `sum_x |f_k - f| / sum_x |c|` for each;
  `gap_ne`: `sum_x |f_live,k - f_frozen,k| / sum_x |c|`, what normalization does.
- **stability** of the eigenvectors under the real norm: the live linearization reads the
  layer's output along `w_live(x) = d f / d (D z)` (statistics differentiated), whose
  interaction matrix `Q(w_live(x))` depends on the input. `overlap[k]` is the mean over
  inputs of `|V_k^T V'_k(x)|_F^2 / k`, the top-k eigenspace overlap of the frozen `Q(w)`
  and the live `Q(w_live(x))` (1: the same top-k features; for k = 1 the squared cosine of
  the top eigenvectors); `readout_cosine` is the mean cosine of `w` and `w_live(x)`.

Every value is reported per target (`[n_targets]` or `[n_targets, len(ks)]`) and as the
mean over targets (`*_mean`).
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from bilens.analysis.interaction import interaction_matrix, sorted_eigh
from bilens.core.errors import BilensError, check_inputs

if TYPE_CHECKING:
    from bilens.analysis.direct_path import DirectPath

Decomposition = Any     # bilens.analysis.decompose.Decomposition (which imports this module)

STABILITY_KS = (1, 4, 16)


def default_ks(d_model: int) -> list[int]:
    """1, 2, 4, ... up to `d_model`, and `d_model` itself."""
    ks, k = [], 1
    while k < d_model:
        ks.append(k)
        k *= 2
    return ks + [d_model]


def check_ks(ks: Sequence[int] | None, d_model: int) -> list[int]:
    if ks is None:
        return default_ks(d_model)
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1 or out[-1] > d_model:
        raise BilensError(f"ks: expected sizes in 1..{d_model} (d_model), got {list(ks)}")
    return out


def _reference(x: Tensor, baseline: str | Tensor) -> Tensor:
    if isinstance(baseline, Tensor):
        if baseline.shape != (x.shape[1],):
            raise BilensError(f"baseline: a reference input must have shape [{x.shape[1]}], "
                              f"got {list(baseline.shape)}")
        return baseline.to(x)[None]
    if baseline == "mean":
        return x.mean(0, keepdim=True)
    if baseline == "zero":
        return torch.zeros_like(x[:1])
    raise BilensError(f"baseline: expected 'mean', 'zero' or an input [d_in], got {baseline!r}")


def _ne(a: Tensor, b: Tensor, scale: Tensor) -> Tensor:
    """`sum_x |a - b| / sum_x |scale|` over the input axis (-2 of `[T, N, K]`)."""
    return (a - b).abs().sum(-2) / scale.abs().sum(-1, keepdim=True).clamp_min(1e-300)


def _share(dc: Tensor, df: Tensor) -> Tensor:
    """`<dc, df> / <df, df>` over inputs, per target (`[T, N]` each)."""
    return (dc * df).sum(-1) / df.square().sum(-1).clamp_min(1e-300)


def _listed(t: Tensor) -> list:
    return t.detach().cpu().tolist()


def faithfulness(
    path: DirectPath,
    dec: Decomposition,
    x: Float[Tensor, "batch d_in"],
    *,
    ks: Sequence[int] | None = None,
    baseline: str | Tensor = "mean",
    stability_n: int = 16,
) -> dict[str, Any]:
    """Measure `dec` on inputs `x` (see the module docstring); a JSON-ready dict."""
    check_inputs(x, path.d_in)
    ks = check_ks(ks, path.d_model)
    x = x.to(path.device, torch.float64)
    run, ref = path.run(x), path.run(_reference(x, baseline))
    c = dec.target_directions.to(x)                                          # [T, n_out]
    f, f_ref = (run.logits @ c.T).T, (ref.logits @ c.T).T                    # [T, N], [T, 1]
    out: dict[str, Any] = {"n_inputs": int(x.shape[0]), "ks": ks,
                           "baseline": baseline if isinstance(baseline, str) else "input",
                           "layers": {}}
    w0 = path.readout(0, c)
    dembed = path.factor(run, 0) * (path.embedding_term(run) @ w0.T).T \
        - path.factor(ref, 0) * (path.embedding_term(ref) @ w0.T).T
    out["embedding_share"] = _listed(_share(dembed, f - f_ref))
    total = _share(dembed, f - f_ref)
    for l in dec.layers:
        layer, share = _layer(path, dec, run, ref, l, ks, f - f_ref)
        out["layers"][str(l)] = layer
        total = total + share
    if sorted(dec.layers) == list(range(path.n_layers)):
        out["direct_share_total"] = _listed(total)
        out["direct_share_total_mean"] = total.mean().item()
    last = path.n_layers - 1
    if last in dec.layers:
        out["last_layer"] = {"layer": last, **_last_layer(path, dec, run, f, ks),
                             "stability": stability(path, dec, run, stability_n)}
    return out


def _layer(path: DirectPath, dec: Decomposition, run: Any, ref: Any, l: int, ks: list[int],
           df: Tensor) -> tuple[dict[str, Any], Tensor]:
    """Top-k reconstruction of layer `l`'s direct contribution and its direct share."""
    cum, fac = _cumulative(path, dec, run, l)                                 # [T, N, d], [N]
    c_k = fac[:, None] * cum[..., [k - 1 for k in ks]]                        # [T, N, K]
    c = fac * cum[..., -1]                                                    # [T, N]
    ne = _ne(c_k, c[..., None], c)                                            # [T, K]
    c_ref = path.factor(ref, l) * dec.contribution(l, path.inputs(ref, l))   # [T, 1]
    share = _share(c - c_ref, df)
    return {"recon_ne": _listed(ne), "recon_ne_mean": _listed(ne.mean(0)),
            "direct_share": _listed(share), "direct_share_mean": share.mean().item(),
            "factor_mean": fac.mean().item()}, share


def _cumulative(path: DirectPath, dec: Decomposition, run: Any, l: int) -> tuple[Tensor, Tensor]:
    """`sum_{i<=j} lambda_i (v_i . u)^2` for every `j` (`[T, N, d]`), and the factors `[N]`."""
    u = path.inputs(run, l)
    proj = torch.einsum("nd,tdk->tnk", u, dec.eigenvectors[l].to(u))        # v_i . u
    return (dec.eigenvalues[l].to(u)[:, None, :] * proj.square()).cumsum(-1), path.factor(run, l)


def _last_layer(path: DirectPath, dec: Decomposition, run: Any, f: Tensor,
                ks: list[int]) -> dict[str, Any]:
    """The last layer's rank-k truncation, frozen and with every norm live."""
    l = path.n_layers - 1
    cum, fac = _cumulative(path, dec, run, l)
    q = cum[..., -1]                                                          # u^T Q u [T, N]
    dq = cum[..., [k - 1 for k in ks]] - q[..., None]                         # [T, N, K]
    frozen_ne, live_ne, gap_ne = [], [], []
    c = dec.target_directions.to(q)
    with torch.no_grad():
        for t in range(len(dec.targets)):
            w = dec.direction[l][t].to(q)
            offset = dq[t].T[..., None] * (w / w.square().sum().clamp_min(1e-300))  # [K, N, d]
            f_live = path.tail(run, offset) @ c[t]                                   # [K, N]
            f_frozen = f[t] + fac * dq[t].T                                          # [K, N]
            scale = (fac * q[t]).abs().sum().clamp_min(1e-300)
            frozen_ne.append((f_frozen - f[t]).abs().sum(-1) / scale)
            live_ne.append((f_live - f[t]).abs().sum(-1) / scale)
            gap_ne.append((f_live - f_frozen).abs().sum(-1) / scale)
    out = {}
    for name, rows in (("frozen_ne", frozen_ne), ("live_ne", live_ne), ("gap_ne", gap_ne)):
        table = torch.stack(rows)                                                    # [T, K]
        out[name], out[f"{name}_mean"] = _listed(table), _listed(table.mean(0))
    return out


def live_readout(path: DirectPath, run: Any, c: Tensor) -> Float[Tensor, "target batch d_model"]:
    """`w_live(x) = d f / d (D z)` of the last layer, every norm's statistics differentiated."""
    rows = []
    for t in range(c.shape[0]):
        offset = torch.zeros_like(run.resid[:, -1]).requires_grad_(True)
        with torch.enable_grad():
            f = path.tail(run, offset) @ c[t]
            (grad,) = torch.autograd.grad(f.sum(), offset)
        rows.append(grad)
    return torch.stack(rows)


def stability(path: DirectPath, dec: Decomposition, run: Any, n: int,
              ks: Sequence[int] = STABILITY_KS) -> dict[str, Any]:
    """Top-k eigenspace overlap of the last layer's frozen and live interaction matrices."""
    l = path.n_layers - 1
    ks = [k for k in ks if k <= path.d_model]
    L, R, D = path.weights(l)
    c = dec.target_directions.to(L)
    w_live = live_readout(path, run, c)[:, :max(1, int(n))]                  # [T, n, d]
    overlap, cosine = [], []
    for t in range(c.shape[0]):
        _, V_live = sorted_eigh(interaction_matrix(L, R, D, w_live[t]))       # [n, d, d]
        V = dec.eigenvectors[l][t].to(L)                                      # [d, d]
        overlap.append(torch.stack([
            (V[:, :k].T @ V_live[:, :, :k]).square().sum((-2, -1)).mean() / k for k in ks]))
        w = dec.direction[l][t].to(L)
        cosine.append(torch.nn.functional.cosine_similarity(w_live[t], w[None], dim=-1).mean())
    overlap_t, cosine_t = torch.stack(overlap), torch.stack(cosine)
    return {"ks": ks, "n_inputs": int(w_live.shape[1]), "overlap": _listed(overlap_t),
            "overlap_mean": _listed(overlap_t.mean(0)), "readout_cosine": _listed(cosine_t),
            "readout_cosine_mean": cosine_t.mean().item()}

"""Weight-based decomposition of a language model (docs/spec.md §9-§10): faithfulness on token
sequences and the tokens each eigenvector aligns with.

Every (sequence, position) is one input: its `u` is the MLP's input at that position and
its statistic factor the product of `1/s` of the norms on the direct path there
(`bilens.analysis.transformer_path`). The measures are those of
`bilens.analysis.eigen_faithfulness` (`recon_ne`, and for the last layer the rank-k
truncation frozen and with every norm live, and the eigenvectors' stability), with one
change: the direct share's reference is not a reference *input* (there is no mean token
sequence) but each term's mean over the inputs (`baseline="mean"`, the default), or none
(`"zero"`: raw values). Attention is not on the direct path, so in a transformer the shares
of the embedding and the MLPs do not sum to 1; the rest is what attention carries.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bilens.analysis.eigen_faithfulness import (
    _cumulative,
    _last_layer,
    _listed,
    _ne,
    _share,
    check_ks,
    stability,
)
from bilens.analysis.transformer_path import FlatRun, TransformerDirectPath
from bilens.core.errors import BilensError

TOP_TOKENS = 5
TOP_VECTORS = 4


def _centered(t: Tensor, baseline: str) -> Tensor:
    return t - t.mean(-1, keepdim=True) if baseline == "mean" else t


def _subset(run: FlatRun, n: int) -> FlatRun:
    """`n` inputs spread evenly over the run (every sequence, not the first one's positions)."""
    idx = torch.linspace(0, run.logits.shape[0] - 1, max(1, min(n, run.logits.shape[0])))
    idx = idx.round().long().unique()
    return FlatRun(logits=run.logits[idx], resid=run.resid[idx], scale=run.scale[idx],
                   u=run.u[idx], embed=run.embed[idx])


def sequence_faithfulness(path: TransformerDirectPath, dec: Any, tokens: Tensor, *,
                          ks: Sequence[int] | None = None, baseline: str | Tensor = "mean",
                          stability_n: int = 16) -> dict[str, Any]:
    """Measure `dec` on token sequences `[N, T]`, every position an input; a JSON-ready dict."""
    if not isinstance(baseline, str) or baseline not in ("mean", "zero"):
        raise BilensError(f"baseline: a language model takes 'mean' or 'zero', got "
                          f"{baseline if isinstance(baseline, str) else 'a tensor'!r}")
    ks = check_ks(ks, path.d_model)
    run = path.run(tokens)
    c = dec.target_directions.to(run.logits)                                 # [T, vocab]
    f = (run.logits @ c.T).T                                                 # [T, N*T]
    df = _centered(f, baseline)
    out: dict[str, Any] = {"n_sequences": int(tokens.shape[0]), "seq_len": int(tokens.shape[1]),
                           "n_inputs": int(f.shape[1]), "inputs": "every (sequence, position)",
                           "ks": ks, "baseline": baseline,
                           "share_reference": "each term's mean over the inputs"
                           if baseline == "mean" else "none (raw values)", "layers": {}}
    emb = path.embed_factor(run) * (run.embed @ path.embed_readout(c).T).T
    total = _share(_centered(emb, baseline), df)
    out["embedding_share"] = _listed(total)
    for l in dec.layers:
        cum, fac = _cumulative(path, dec, run, l)                             # [T, N, d], [N]
        contrib = fac * cum[..., -1]
        ne = _ne(fac[:, None] * cum[..., [k - 1 for k in ks]], contrib[..., None], contrib)
        share = _share(_centered(contrib, baseline), df)
        total = total + share
        out["layers"][str(l)] = {"recon_ne": _listed(ne), "recon_ne_mean": _listed(ne.mean(0)),
                                 "direct_share": _listed(share),
                                 "direct_share_mean": share.mean().item(),
                                 "factor_mean": fac.mean().item()}
    if sorted(dec.layers) == list(range(path.n_layers)):
        out["direct_share_total"] = _listed(total)
        out["direct_share_total_mean"] = total.mean().item()
        out["direct_share_note"] = "attention is off the direct path; 1 - total is its share"
    last = path.n_layers - 1
    if last in dec.layers:
        out["last_layer"] = {"layer": last, **_last_layer(path, dec, run, f, ks),
                             "stability": stability(path, dec, _subset(run, stability_n),
                                                    stability_n)}
    return out


def _decode(tokenizer: Any, i: int) -> str:
    return str(i) if tokenizer is None else tokenizer.decode([i])


def token_alignment(path: TransformerDirectPath, dec: Any, n_vectors: int = TOP_VECTORS,
                    top: int = TOP_TOKENS) -> dict[str, Any]:
    """For each layer, target and top eigenvector `v` (by `|lambda|`): the tokens whose
    embedding, carried to `u` on the direct path (`input_map`), has the largest and the most
    negative dot product with `v`. A JSON-ready dict keyed by layer."""
    out: dict[str, Any] = {"score": "v . M E[token], M the gains/centering of the norms "
                                    "between the embedding and u (every s = 1)",
                           "sign": "an eigenvector's sign is arbitrary: (v . u)^2 is the same "
                                   "for v and -v, so the two lists are its two ends",
                           "layers": {}}
    for l in dec.layers:
        scores_all = path.input_map(l).T.to(dec.eigenvectors[l])             # [vocab, d]
        rows = []
        for t, spec in enumerate(dec.targets):
            for i in range(min(n_vectors, path.d_model)):
                scores = scores_all @ dec.eigenvectors[l][t, :, i]
                k = min(top, scores.shape[0])
                ends = {}
                for name, sign in (("positive", 1.0), ("negative", -1.0)):
                    vals, ids = (sign * scores).topk(k)
                    ends[name] = [{"id": int(j), "token": _decode(path.tokenizer, int(j)),
                                   "score": sign * float(v)} for v, j in zip(vals, ids,
                                                                              strict=True)]
                rows.append({"target": spec, "rank": i,
                             "eigenvalue": float(dec.eigenvalues[l][t, i]), **ends})
        out["layers"][str(l)] = rows
    return out

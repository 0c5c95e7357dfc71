"""Weight-based decomposition of the bilinear transformer (SPEC §9-§10), in float64.

Each check is written independently of `bilens.analysis.transformer_path`: the published
construction (the 3-tensor from `D, L, R` contracted with `W^T c`) for `Q`, and the
direct contribution `c . W (frozen norm maps) D z_l` at the same position, by hand.
"""

# ruff: noqa: E741

from __future__ import annotations

import json

import pytest
import torch
from conftest import CASES, POSITIONS

from bilens.analysis.decompose import decompose
from bilens.analysis.direct_path import direct_path
from bilens.core.config import TransformerConfig
from bilens.core.errors import BilensError
from bilens.core.models.transformer import BilinearTransformer

VOCAB, D, H, N_LAYERS, T = 64, 8, 12, 3, 7


def _model(norm: str, position: str, seed: int = 0, vocab: int = VOCAB) -> BilinearTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=vocab, n_ctx=32, d_model=D, d_hidden=H,
                            n_layers=N_LAYERS, n_heads=2, norm=norm, norm_position=position)
    model = BilinearTransformer(cfg).double().eval()
    with torch.no_grad():                                  # non-trivial gains and betas
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.randn_like(p))
            elif name.endswith("norm.bias"):
                p.copy_(0.3 * torch.randn_like(p))
    return model


def _tokens(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("position", POSITIONS)
def test_no_norm_q_matches_published_construction(position):
    model = _model("none", position)
    c = torch.randn(2, VOCAB, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dec = decompose(model, target=[c[0], c[1], "class:7", "diff:3,9"])
    C = torch.cat([c, torch.eye(VOCAB, dtype=torch.float64)[[7]],
                   (torch.eye(VOCAB, dtype=torch.float64)[3] - torch.eye(VOCAB)[9].double())[None]])
    W = model.head.weight.detach()
    for l, layer in enumerate(model.layers):
        B = torch.einsum("oh,hi,hj->oij", layer.D, layer.L, layer.R).detach()   # 3-tensor
        for t in range(C.shape[0]):
            M = torch.einsum("o,oij->ij", W.T @ C[t], B)
            Q = (M + M.T) / 2
            assert torch.allclose(dec.interaction[l][t], Q, atol=1e-10, rtol=0)
            lam = torch.linalg.eigvalsh(Q)
            lam = lam[lam.abs().argsort(descending=True)]
            assert torch.allclose(dec.eigenvalues[l][t], lam, atol=1e-10, rtol=0)
            V = dec.eigenvectors[l][t]
            assert torch.allclose(V.T @ V, torch.eye(D, dtype=torch.float64), atol=1e-10)
            assert torch.allclose(V @ torch.diag(dec.eigenvalues[l][t]) @ V.T, Q, atol=1e-10)


def _direct_by_hand(model, run, l: int, c: torch.Tensor) -> torch.Tensor:
    """`c . W (N_last ... N_first) D z_l` per (sequence, position), statistics frozen at the
    run's, attention and later MLPs skipped; LayerNorm's beta is a constant, not the MLP's."""
    L = model.config.n_layers
    norms = [2 * L] if model.config.norm_position == "pre" else list(range(2 * l + 1, 2 * L))
    y = run.z[:, l] @ model.layers[l].D.T                                 # [B, T, d]
    for i in norms:
        norm = model.norm(i)
        if norm.kind == "none":
            continue
        if norm.kind == "layer":
            y = y - y.mean(-1, keepdim=True)
        y = norm.weight * y / run.scale[:, :, i, None]
    return (y @ model.head.weight.T) @ c                                  # [B, T]


@pytest.mark.parametrize("norm,position", CASES)
def test_quadratic_form_times_factor_is_the_direct_contribution(norm, position):
    model = _model(norm, position)
    tokens = _tokens()
    c = torch.randn(VOCAB, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    dec = decompose(model, target=c)
    path = direct_path(model)
    flat = path.run(tokens)
    with torch.no_grad():
        run = model.run(tokens)
        for l in range(N_LAYERS):
            want = _direct_by_hand(model, run, l, c).reshape(-1)
            u = run.u[:, l].reshape(-1, D)                                # [B*T, d]
            got = path.factor(flat, l) * dec.contribution(l, u)[0]
            assert want.abs().max() > 1e-3
            assert torch.allclose(got, want, atol=1e-10, rtol=0), (l, (got - want).abs().max())
            assert torch.allclose(path.inputs(flat, l), u)


@pytest.mark.parametrize("norm,position", CASES)
def test_faithfulness_on_tokens(norm, position):
    model = _model(norm, position)
    dec = decompose(model, target=["class:2", "diff:1,5"], inputs=_tokens(), stability_n=8)
    faith = dec.faithfulness
    assert faith["n_inputs"] == 5 * T and faith["ks"][-1] == D
    for layer in faith["layers"].values():
        assert layer["recon_ne_mean"][-1] < 1e-10                  # rank d is exact
    last = faith["last_layer"]
    assert torch.allclose(torch.tensor(last["frozen_ne"]),
                          torch.tensor(faith["layers"][str(N_LAYERS - 1)]["recon_ne"]))
    assert last["live_ne_mean"][-1] < 1e-10 and last["gap_ne_mean"][-1] < 1e-10
    assert 0 <= min(last["stability"]["overlap_mean"]) <= max(last["stability"]["overlap_mean"])
    if norm == "none":                                             # frozen = live
        assert max(last["gap_ne_mean"]) < 1e-10
    assert set(dec.tokens["layers"]) == {str(l) for l in range(N_LAYERS)}
    row = dec.tokens["layers"]["0"][0]
    assert len(row["positive"]) == 5 and row["positive"][0]["score"] >= row["positive"][1]["score"]


def test_token_alignment_scores_are_v_dot_embedding():
    model = _model("none", "pre")                                  # no gains: M = I
    dec = decompose(model, target="class:3", layers=[1])
    v = dec.eigenvectors[1][0, :, 0]
    scores = model.embed.weight.detach() @ v
    row = dec.tokens["layers"]["1"][0]
    assert row["positive"][0]["id"] == int(scores.argmax())
    assert row["negative"][0]["id"] == int(scores.argmin())
    assert row["positive"][0]["score"] == pytest.approx(float(scores.max()), abs=1e-12)


def _tokenizer():
    from bilens.core.tokenizer import train_tokenizer

    return train_tokenizer(["the cat sat on the mat. " * 20, "a dog ran far away. " * 20], 280)


def test_token_targets_and_bad_input():
    model = _model("rms", "pre", vocab=300)
    with pytest.raises(BilensError, match="out of range") as err:
        decompose(model, target="class:300")
    assert "\n" not in str(err.value)
    with pytest.raises(BilensError, match="tokenizer"):
        decompose(model, target="token:the")
    with pytest.raises(BilensError, match="token target"):
        decompose(model)
    model.tokenizer = _tokenizer()
    with pytest.raises(BilensError, match="not one") as err:
        decompose(model, target="token:the cat sat")
    assert "\n" not in str(err.value)
    single = next(s for s in ("the", " the", "a", "t") if len(model.tokenizer.encode(s).ids) == 1)
    tid = model.tokenizer.encode(single).ids[0]
    a = decompose(model, target=f"token:{single}")
    b = decompose(model, target=f"class:{tid}")
    assert a.targets == [f"token:{single}"]
    assert torch.equal(a.eigenvalues[0], b.eigenvalues[0])


def _cli(*argv: str) -> int:
    from bilens.cli import main

    return main(list(argv))


def test_cli_decompose_transformer_checkpoint(tmp_path, capsys):
    from safetensors.torch import load_file

    from bilens.core.checkpoint import save

    model = _model("layer", "pre")
    save(model, tmp_path / "ckpt", {"dataset": "synthetic-lm"})
    out = tmp_path / "dec"
    assert _cli("decompose", str(tmp_path / "ckpt"), "--target", "class:5", "--n", "4",
                "--no-plots", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "missed by top-k" in printed and "| layer | target |" in printed
    summary = json.loads((out / "decomposition.json").read_text())
    assert summary["faithfulness"]["n_sequences"] == 4
    assert summary["faithfulness"]["dataset"] == "synthetic-lm"
    assert summary["tokens"]["layers"]["0"][0]["target"] == "class:5"
    tensors = load_file(str(out / "decomposition.safetensors"))
    assert tensors["eigenvectors.2"].shape == (1, D, D)
    assert (out / "tokens.md").read_text().startswith("| layer |")
    assert _cli("decompose", str(tmp_path / "ckpt"), "--target", "class:99",
                "--out", str(tmp_path / "bad")) != 0
    err = capsys.readouterr().err.strip()
    assert "out of range" in err and len(err.splitlines()) == 1

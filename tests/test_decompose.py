"""Weight-based decomposition (SPEC §10) against references written from the definitions.

The references read only the SPEC §6 state dict and follow SPEC §1 one input at a time, in
float64: the published construction of Q (the 3-tensor B[o, i, j] = sum_h D[o,h] L[h,i]
R[h,j] contracted with the head's read-out, symmetrized), and the layer's true direct
contribution as a literal rerun with every norm statistic frozen.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import CASES, POSITIONS

from bilens.analysis.decompose import decompose, load_decomposition
from bilens.core.errors import BilensError

TOL = 1e-10


# ---------------------------------------------------------------- literal references


def _sd(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().double() for k, v in model.state_dict().items()}


def _norm(kind: str, r, gamma, beta, eps: float, s_frozen: float | None = None):
    """SPEC §1 for one vector; with `s_frozen`, s is that constant (centering kept)."""
    d = r.shape[0]
    if kind == "none":
        return r.clone(), 1.0
    centered = r - r.mean() if kind == "layer" else r
    s = math.sqrt(float((centered ** 2).sum()) / d + eps) if s_frozen is None else s_frozen
    y = torch.stack([gamma[i] * centered[i] / s for i in range(d)])
    return (y + beta if kind == "layer" else y), s


def literal_forward(sd, cfg, x, stats=None, z_fixed=None, out_offset=None):
    """Logits of one input following SPEC §1 line by line.

    Args:
        stats: one s per norm, in order of use, to hold fixed (None recomputes).
        z_fixed: {layer: z} replaces the layer's hidden vector.
        out_offset: (layer, vector) added to that layer's output `D z`.

    Returns:
        (logits, u per layer, s per norm)
    """
    kind, post, n = cfg.norm, cfg.norm_position == "post", cfg.n_layers
    used: list[float] = []

    def norm(name, r):
        s0 = None if stats is None else stats[len(used)]
        y, s = _norm(kind, r, sd.get(f"{name}.weight"), sd.get(f"{name}.bias"), cfg.eps, s0)
        used.append(s)
        return y

    h = sd["embed.weight"] @ x.double()
    us = []
    for l in range(n):
        L, R, D = sd[f"layers.{l}.L"], sd[f"layers.{l}.R"], sd[f"layers.{l}.D"]
        u = h if post else norm(f"layers.{l}.norm", h)
        us.append(u)
        z = torch.stack([(L[k] @ u) * (R[k] @ u) for k in range(L.shape[0])])
        if z_fixed is not None and l in z_fixed:
            z = z_fixed[l]
        out = D @ z
        if out_offset is not None and out_offset[0] == l:
            out = out + out_offset[1]
        h = h + out
        if post:
            h = norm(f"layers.{l}.norm", h)
    if not post:
        h = norm("final_norm", h)
    return sd["head.weight"] @ h, us, used


def literal_z(sd, l, u):
    L, R = sd[f"layers.{l}.L"], sd[f"layers.{l}.R"]
    return torch.stack([(L[k] @ u) * (R[k] @ u) for k in range(L.shape[0])])


def frozen_direct_contribution(sd, cfg, x, l, c):
    """Layer l's contribution to `c . logits` along the direct path, statistics frozen:
    the target minus a rerun (every s frozen at its clean value) in which layer l writes
    nothing and every later layer's z is held at its clean value."""
    logits, us, stats = literal_forward(sd, cfg, x)
    later = {j: literal_z(sd, j, us[j]) for j in range(l + 1, cfg.n_layers)}
    zero = torch.zeros(sd[f"layers.{l}.L"].shape[0], dtype=torch.float64)
    removed, _, _ = literal_forward(sd, cfg, x, stats=stats, z_fixed={l: zero, **later})
    return float(c @ logits - c @ removed), us[l], stats


def published_q(sd, l, w):
    """Pearce, Dooms et al.: B[o, i, j] = sum_h D[o, h] L[h, i] R[h, j]; Q = sym(w . B)."""
    L, R, D = sd[f"layers.{l}.L"], sd[f"layers.{l}.R"], sd[f"layers.{l}.D"]
    d_model, d_hidden = D.shape
    B = torch.zeros(d_model, d_model, d_model, dtype=torch.float64)
    for o in range(d_model):
        for h in range(d_hidden):
            B[o] += D[o, h] * torch.outer(L[h], R[h])
    A = (w[:, None, None] * B).sum(0)
    return (A + A.T) / 2


def _sorted(lam):
    return lam[lam.abs().argsort(descending=True)]


# ---------------------------------------------------------------- no norm: the published Q


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_no_norm_matches_the_published_construction(make_model, position, seed):
    model = make_model("none", position, seed)
    sd = _sd(model)
    c = torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=torch.float64)
    dec = decompose(model, target=["class:1", "diff:0,3", c])
    heads = [torch.eye(4, dtype=torch.float64)[1],
             torch.eye(4, dtype=torch.float64)[0] - torch.eye(4, dtype=torch.float64)[3], c]
    for l in range(model.config.n_layers):
        for t, ct in enumerate(heads):
            w = sd["head.weight"].T @ ct                   # no norm: the head's read-out
            Q = published_q(sd, l, w)
            torch.testing.assert_close(dec.interaction[l][t], Q, atol=TOL, rtol=0)
            torch.testing.assert_close(dec.eigenvalues[l][t], _sorted(torch.linalg.eigh(Q)[0]),
                                       atol=TOL, rtol=0)
            torch.testing.assert_close(dec.direction[l][t], w, atol=TOL, rtol=0)


# ---------------------------------------------------------------- every norm x position


@pytest.mark.parametrize("norm,position", CASES)
@pytest.mark.parametrize("seed", [0, 3])
def test_quadratic_form_times_factor_is_the_frozen_direct_contribution(make_model, norm,
                                                                        position, seed):
    model = make_model(norm, position, seed)
    cfg, sd = model.config, _sd(model)
    c = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    dec = decompose(model, target=[c, "class:2"])
    gen = torch.Generator().manual_seed(seed)
    for x in torch.randn(4, cfg.d_in, generator=gen, dtype=torch.float64):
        for l in range(cfg.n_layers):
            for t, ct in enumerate((c, torch.eye(4, dtype=torch.float64)[2])):
                truth, u, stats = frozen_direct_contribution(sd, cfg, x, l, ct)
                on_path = stats[l:] if position == "post" else stats[-1:]
                factor = math.prod(1 / s for s in on_path)
                Q = dec.interaction[l][t]
                assert abs(float(u @ Q @ u) * factor - truth) <= TOL * max(1.0, abs(truth))


@pytest.mark.parametrize("norm,position", CASES)
def test_eigenvectors_are_orthonormal_and_paired(make_model, norm, position):
    model = make_model(norm, position, 2, d_model=9, d_hidden=11)
    dec = decompose(model)
    u = torch.randn(5, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for l in dec.layers:
        lam, V, Q = dec.eigenvalues[l], dec.eigenvectors[l], dec.interaction[l]
        assert lam.shape == (4, 9) and V.shape == (4, 9, 9)
        eye = torch.eye(9, dtype=torch.float64).expand(4, 9, 9)
        torch.testing.assert_close(V.transpose(1, 2) @ V, eye, atol=TOL, rtol=0)
        torch.testing.assert_close(Q @ V, V * lam[:, None, :], atol=TOL, rtol=0)   # columns
        assert (lam.abs()[:, :-1] >= lam.abs()[:, 1:]).all()                     # |lambda| desc
        full = torch.einsum("ni,tij,nj->tn", u, Q, u)
        torch.testing.assert_close(dec.contribution(l, u, k=9), full, atol=TOL, rtol=0)


def test_layer_norm_read_out_is_centred_and_q_ignores_the_mean_direction(make_model):
    """LayerNorm's centering is folded into w: sum(w) = 0 wherever the next norm is a
    LayerNorm, i.e. everywhere on a post-norm path."""
    dec = decompose(make_model("layer", "post", 0))
    for l in dec.layers:
        assert dec.direction[l].sum(-1).abs().max() < TOL


# ---------------------------------------------------------------- faithfulness on data


def _x(model, n=24, seed=0):
    return torch.randn(n, model.config.d_in, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("position", POSITIONS)
def test_no_norm_live_equals_frozen_and_shares_add_to_one(make_model, position):
    model = make_model("none", position, 1)
    faith = decompose(model, inputs=_x(model)).faithfulness
    last = faith["last_layer"]
    assert max(max(row) for row in last["gap_ne"]) < TOL
    assert all(abs(o - 1) < TOL for o in last["stability"]["overlap_mean"])
    shares = torch.tensor(faith["embedding_share"], dtype=torch.float64) + sum(
        torch.tensor(v["direct_share"], dtype=torch.float64) for v in faith["layers"].values())
    torch.testing.assert_close(shares, torch.ones(4, dtype=torch.float64), atol=TOL, rtol=0)
    for layer in faith["layers"].values():       # the rank-d_model truncation is exact
        assert max(row[-1] for row in layer["recon_ne"]) < TOL


@pytest.mark.parametrize("norm,position", CASES)
def test_live_truncation_matches_a_literal_rerun(make_model, norm, position):
    """The last layer's rank-k truncation with every norm live, against SPEC §1 rerun with
    the layer's output moved by (q_k - q) w / |w|^2."""
    model = make_model(norm, position, 4)
    cfg, sd = model.config, _sd(model)
    x = _x(model, n=6)
    ks = [1, 3]
    dec = decompose(model, target=["diff:1,2"], inputs=x, ks=ks)
    l = cfg.n_layers - 1
    w, c = dec.direction[l][0], torch.tensor([0.0, 1.0, -1.0, 0.0], dtype=torch.float64)
    V, lam = dec.eigenvectors[l][0], dec.eigenvalues[l][0]
    errs = {k: [] for k in ks}
    scale = 0.0
    for xi in x:
        logits, us, stats = literal_forward(sd, cfg, xi)
        u = us[l]
        q = float(u @ dec.interaction[l][0] @ u)
        on_path = stats[l:] if position == "post" else stats[-1:]
        scale += abs(q * math.prod(1 / s for s in on_path))
        for k in ks:
            qk = float(((V[:, :k].T @ u) ** 2 * lam[:k]).sum())
            live, _, _ = literal_forward(sd, cfg, xi, out_offset=(l, (qk - q) * w / (w @ w)))
            errs[k].append(abs(float(c @ live - c @ logits)))
    got = dec.faithfulness["last_layer"]["live_ne"][0]
    for i, k in enumerate(ks):
        assert abs(got[i] - sum(errs[k]) / scale) < 1e-9


@pytest.mark.parametrize("norm,position", [("rms", "post"), ("layer", "pre"), ("layer", "post")])
def test_live_readout_is_the_true_gradient(make_model, norm, position):
    """The stability measurement's w_live(x) = d f / d(D z) of the last layer, against
    central finite differences of the literal network (every statistic live)."""
    from bilens.analysis.direct_path import direct_path
    from bilens.analysis.eigen_faithfulness import live_readout

    model = make_model(norm, position, 5)
    cfg, sd = model.config, _sd(model)
    x = _x(model, n=2)
    path = direct_path(model)
    c = torch.tensor([[0.5, -1.0, 0.0, 2.0]], dtype=torch.float64)
    got = live_readout(path, path.run(x), c)[0]
    l, h = cfg.n_layers - 1, 1e-6
    for n, xi in enumerate(x):
        for i in range(cfg.d_model):
            e = torch.zeros(cfg.d_model, dtype=torch.float64)
            e[i] = h
            up = literal_forward(sd, cfg, xi, out_offset=(l, e))[0]
            down = literal_forward(sd, cfg, xi, out_offset=(l, -e))[0]
            assert abs(float(c[0] @ (up - down)) / (2 * h) - got[n, i]) < 1e-7


def test_contribution_batched_equals_one_by_one(make_model):
    model = make_model("rms", "pre", 0)
    dec = decompose(model)
    u = torch.randn(5, model.config.d_model, dtype=torch.float64)
    for k in (1, 2, 6):
        batched = dec.contribution(1, u, k=k)
        single = torch.cat([dec.contribution(1, u[i:i + 1], k=k) for i in range(5)], 1)
        torch.testing.assert_close(batched, single, atol=TOL, rtol=0)


# ---------------------------------------------------------------- targets, layers, files


@pytest.mark.parametrize("target,fragment", [
    ("predicted", "depends on the input"), ("class:9", "out of range"),
    ("bogus", "unknown spec"), ([], "empty"), (torch.ones(3), "shape"),
    ("diff:1", "two classes")])
def test_bad_targets_raise_one_clear_error(make_model, target, fragment):
    with pytest.raises(BilensError, match=fragment):
        decompose(make_model("rms", "post", 0), target=target)


@pytest.mark.parametrize("layers", [3, [0, 5], [-1], [True]])
def test_bad_layers_raise(make_model, layers):
    with pytest.raises(BilensError, match="out of range"):
        decompose(make_model("rms", "post", 0), layers=layers)


def test_default_targets_are_every_class_and_layers_select(make_model):
    dec = decompose(make_model("layer", "pre", 0), layers=[2, 0])
    assert dec.targets == [f"class:{c}" for c in range(4)]
    assert dec.layers == [2, 0] and set(dec.eigenvalues) == {0, 2}
    torch.testing.assert_close(dec.target_directions, torch.eye(4, dtype=torch.float64))


def test_files_follow_spec_and_refuse_to_overwrite(make_model, tmp_path):
    model = make_model("rms", "post", 0)
    dec = decompose(model, target=["class:0", "diff:1,2"], inputs=_x(model))
    out = tmp_path / "dec"
    dec.save(out)
    tensors, summary = load_decomposition(out)
    d = model.config.d_model
    assert set(tensors) == {f"{name}.{l}" for name in ("direction", "eigenvalues",
                                                       "eigenvectors") for l in range(3)}
    for l in range(3):
        assert tensors[f"direction.{l}"].shape == (2, d)
        assert tensors[f"eigenvalues.{l}"].shape == (2, d)
        assert tensors[f"eigenvectors.{l}"].shape == (2, d, d)
    assert [t["spec"] for t in summary["targets"]] == ["class:0", "diff:1,2"]
    assert summary["faithfulness"]["last_layer"]["layer"] == 2
    with pytest.raises(BilensError, match="overwrite=True"):
        dec.save(out)
    dec.save(out, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(BilensError, match="not a bilens decompose output"):
        dec.save(tmp_path / "other", overwrite=True)


def test_float32_models_are_decomposed_in_float64(make_model):
    model64 = make_model("layer", "post", 0)
    model32 = copy.deepcopy(model64).float()
    a, b = decompose(model64), decompose(model32)
    assert b.eigenvalues[0].dtype == torch.float64
    assert model32.dtype == torch.float32                           # the caller's model kept
    torch.testing.assert_close(a.eigenvalues[0], b.eigenvalues[0], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- speed, command line


def test_mnist_shaped_model_decomposes_in_under_10_s():
    """Every layer, all 10 classes, d_in 784 / d_model 256 / d_hidden 512 / 4 layers."""
    import time

    from bilens.core.config import ModelConfig
    from bilens.core.models.mlp import BilinearNet

    torch.manual_seed(0)
    model = BilinearNet(ModelConfig(d_in=784, d_model=256, d_hidden=512, n_layers=4, n_out=10,
                                    norm="layer", norm_position="post"))
    start = time.perf_counter()
    dec = decompose(model)
    seconds = time.perf_counter() - start
    assert dec.eigenvectors[3].shape == (10, 256, 256)
    assert seconds < 10, f"decompose took {seconds:.1f} s"


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> str:
    """A random (untrained) digits-shaped checkpoint: enough for the command's plumbing."""
    from conftest import tiny_model

    from bilens.core.checkpoint import save

    model = tiny_model("rms", "pre", 0, dtype=torch.float32, d_in=64, d_model=8, d_hidden=12,
                       n_layers=2, n_out=10)
    out = tmp_path_factory.mktemp("ckpt") / "digits"
    save(model, out, {"dataset": "digits"})
    return str(out)


def _cli(*argv: str) -> int:
    from bilens.cli import main

    return main(list(argv))


def test_cli_writes_files_and_figures(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "dec"
    assert _cli("decompose", digits_checkpoint, "--target", "class:3", "--target", "diff:3,5",
                "--n", "40", "--out", str(out)) == 0
    names = {p.name for p in out.iterdir()}
    assert {"decomposition.safetensors", "decomposition.json", "spectrum.png",
            "faithfulness.png", "eigenvectors_layer0.png", "eigenvectors_layer1.png"} <= names
    tensors, summary = load_decomposition(out)
    assert tensors["eigenvectors.1"].shape == (2, 8, 8)
    assert summary["faithfulness"]["n_inputs"] == 40
    assert "rank-1 truncation" in capsys.readouterr().out
    assert _cli("decompose", digits_checkpoint, "--no-faithfulness", "--out", str(out)) == 2
    assert "exists; pass --force to replace it" in capsys.readouterr().err
    assert _cli("decompose", digits_checkpoint, "--no-faithfulness", "--no-plots", "--force",
                "--out", str(out)) == 0
    assert not (out / "spectrum.png").exists()
    assert len(load_decomposition(out)[1]["targets"]) == 10


@pytest.mark.parametrize("argv,fragment", [
    (["--target", "class:12"], "out of range"), (["--target", "predicted"], "depends on"),
    (["--target", "nope"], "unknown spec"), (["--layers", "2"], "out of range"),
    (["--ks", "0"], "ks"), (["--baseline", "median"], "--baseline")])
def test_cli_bad_input_is_one_line_and_writes_nothing(digits_checkpoint, tmp_path, capsys,
                                                      argv, fragment):
    out = tmp_path / "dec"
    assert _cli("decompose", digits_checkpoint, *argv, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_report_section_embeds_tables_and_figures(make_model):
    from bilens.report.decomposition import (
        decomposition_html,
        plot_faithfulness_compare,
        render_figures,
    )

    model = make_model("rms", "pre", 0, d_in=64, n_out=10)
    dec = decompose(model, target=["class:1", "diff:2,3"], inputs=_x(model))
    pngs = render_figures(dec, model, dataset="digits")
    assert set(pngs) == {"spectrum.png", "faithfulness.png", "eigenvectors_layer0.png",
                         "eigenvectors_layer1.png", "eigenvectors_layer2.png"}
    assert all(p.startswith(b"\x89PNG") for p in pngs.values())
    section = decomposition_html(dec.summary(), pngs)
    assert section.startswith("<section") and section.count("data:image/png;base64,") == 5
    assert "class:1" in section and "Last layer (2)" in section
    both = plot_faithfulness_compare([{"norm": "rms", "position": "pre",
                                       "faithfulness": dec.faithfulness}])
    assert both.startswith(b"\x89PNG")

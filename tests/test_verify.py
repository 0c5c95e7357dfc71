"""`verify` end to end on tiny random float64 models, the result files, and the CLI."""

import json
import math

import pytest
import torch
from reference_mlp import effects_reference, forward, literal_params
from safetensors.torch import load_file

from bilens import report
from bilens.ablation import ablation_effects_loop
from bilens.analysis.verify import VerifyResult, verify
from bilens.cli import main
from bilens.core.config import ModelConfig
from bilens.core.errors import BilensError
from bilens.core.models.intervention import Intervention
from bilens.core.models.mlp import BilinearNet

B, L, H = 4, 3, 10


def tiny(norm="rms", position="post", seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_in=6, d_model=12, d_hidden=H, n_layers=L, n_out=4, norm=norm,
                      norm_position=position)
    return BilinearNet(cfg).double(), torch.randn(B, 6, dtype=torch.float64)


@pytest.fixture(scope="module")
def result():
    model, x = tiny()
    return verify(model, x, modes=("frozen", "live"), circuit_ks=(1, 2, 4), progress=False)


def test_shapes_and_finite_metrics(result):
    t = result.tensors
    assert t["inputs"].shape == (B, 6) and t["target"].shape == (B, 4)
    for name in ("activation", "predicted.frozen", "predicted.live", "actual",
                 "actual_frozen_norm", "drift.measured", "drift.formula"):
        assert t[name].shape == (B, L, H), name
        assert torch.isfinite(t[name]).all(), name
    assert t["circuit.frozen.joint"].shape == (3, B)
    for mode in ("frozen", "live"):
        overall = result.metrics["modes"][mode]["overall"]
        assert overall["n"] == B * L * H
        for key in ("normalized_error", "pearson", "spearman", "recall@10", "sign_agreement"):
            assert math.isfinite(overall[key]), (mode, key)
        assert len(result.metrics["modes"][mode]["per_layer"]) == L
        assert len(result.metrics["modes"][mode]["per_input"]["pearson"]) == B
    assert math.isfinite(result.metrics["drift"]["overall"]["formula_pearson"])


def test_ground_truth_and_decomposition(result):
    model, x = tiny()
    t = result.tensors
    torch.testing.assert_close(t["actual"], ablation_effects_loop(model, x))
    torch.testing.assert_close(t["actual_frozen_norm"],
                               ablation_effects_loop(model, x, frozen_norm=True))
    p, a, af = t["predicted.frozen"], t["actual"], t["actual_frozen_norm"]
    torch.testing.assert_close((a - af) + (af - p), a - p, rtol=0, atol=1e-15)
    # post-norm, frozen norms: everything after the last layer's z is linear, so the
    # frozen prediction of a last-layer channel is exact against the frozen-norm ablation
    torch.testing.assert_close(p[:, -1], af[:, -1], rtol=1e-9, atol=1e-12)
    d = result.metrics["modes"]["frozen"]["decomposition"]["per_layer"][-1]
    assert d["gating_ne"] < 1e-9 and d["drift_share"] > 0.999999
    # k = 1 circuit: the joint effect is the single top channel's actual effect
    top = p.abs().flatten(1).argmax(1)
    torch.testing.assert_close(t["circuit.frozen.joint"][0], a.flatten(1)[range(B), top])


def test_live_beats_frozen_on_a_normed_model(result):
    # live is the exact first-order prediction of the real network
    ne = {m: result.metrics["modes"][m]["overall"]["normalized_error"] for m in ("frozen", "live")}
    assert ne["live"] < ne["frozen"]


def test_subset_of_layers_is_nan_elsewhere():
    model, x = tiny("layer", "pre")
    r = verify(model, x, modes=("frozen",), layers=[1], circuit_ks=(2,), progress=False)
    a = r.tensors["actual"]
    assert torch.isnan(a[:, [0, 2]]).all() and torch.isfinite(a[:, 1]).all()
    assert torch.isnan(r.tensors["drift.measured"][:, 0]).all()
    assert r.metrics["modes"]["frozen"]["overall"]["n"] == B * H
    assert math.isnan(r.metrics["modes"]["frozen"]["per_layer"][0]["normalized_error"])
    assert math.isfinite(r.metrics["modes"]["frozen"]["circuit"][0]["additivity_error"])
    assert "nan" in report.verify_table(r)


def test_gpu_precision_options_pass_through_and_keep_float64_results(monkeypatch):
    """`backend`/`precision` reach both ablations; off CUDA they mean products in the model's
    own dtype, so a float64 model's ground truth is the float64 SPEC reference's."""
    import bilens.ablation.ablate
    import bilens.analysis.verify

    model, x = tiny()
    seen = []
    real = bilens.ablation.ablate.ablation_effects

    def spy(*args, **kwargs):
        seen.append((kwargs.get("backend"), kwargs.get("precision")))
        return real(*args, **kwargs)

    for module in (bilens.ablation.ablate, bilens.analysis.verify):
        if hasattr(module, "ablation_effects"):
            monkeypatch.setattr(module, "ablation_effects", spy)
    with pytest.warns(RuntimeWarning, match="need CUDA"):     # CPU: eager, with a warning
        fast = verify(model, x, modes=("frozen",), circuit_ks=(), progress=False,
                      backend="triton", precision="3xfp16")
    assert seen == [("triton", "3xfp16")] * 2              # real and frozen-norm ablation
    sd, cfg = literal_params(model)
    zero = torch.zeros(L, H, dtype=torch.float64)
    for i in range(B):
        with torch.no_grad():
            cls = int(forward(sd, cfg, x[i]).logits.argmax())
        onehot = torch.nn.functional.one_hot(torch.tensor(cls), cfg["n_out"]).double()
        for name, frozen in (("actual", False), ("actual_frozen_norm", True)):
            want = effects_reference(sd, cfg, x[i], zero, direction=onehot, frozen_norm=frozen)
            torch.testing.assert_close(fast.tensors[name][i], want, rtol=1e-9, atol=1e-12)
    with pytest.raises(BilensError, match="precision"):
        verify(model, x, modes=("frozen",), progress=False, precision="bf16")


def test_circuit_sizes_never_exceed_the_channels():
    """k = 64 on a layer of H channels ablates H channels; the label must say H."""
    model, x = tiny()
    r = verify(model, x, modes=("frozen",), layers=[1], circuit_ks=(1, 2, 64), progress=False)
    ks = [row["k"] for row in r.metrics["modes"]["frozen"]["circuit"]]
    assert ks == [1, 2, H]
    whole_layer = torch.zeros(B, L, H, dtype=torch.bool)
    whole_layer[:, 1] = True
    patch = {1: (whole_layer[:, 1], torch.zeros(B, H, dtype=torch.float64))}
    clean, ablated = model.run(x), model.run(x, Intervention(patch=patch))
    rows = torch.arange(B)
    cls = clean.logits.argmax(-1)
    expected = ablated.logits[rows, cls] - clean.logits[rows, cls]
    torch.testing.assert_close(r.tensors["circuit.frozen.joint"][-1], expected)


def test_logprob_target_and_mean_baseline():
    model, x = tiny("layer", "pre")
    labels, reference = torch.tensor([0, 1, 2, 3]), torch.randn(20, 6, dtype=torch.float64)
    r = verify(model, x, target="logprob", labels=labels, baselines="mean", reference=reference,
               circuit_ks=(1,), progress=False)
    assert "target" not in r.tensors and r.tensors["label"].tolist() == [0, 1, 2, 3]
    loop = ablation_effects_loop(model, x, target="logprob", baselines="mean", labels=labels,
                                 reference=reference)
    torch.testing.assert_close(r.tensors["actual"], loop)
    assert r.metrics["info"]["baseline"] == "mean"
    assert math.isfinite(r.metrics["modes"]["live"]["overall"]["normalized_error"])


def test_save_and_reload(result, tmp_path):
    out = report.save_verify(result, tmp_path / "v")
    for name in ("results.safetensors", "metrics.json", "summary.md", "scatter.png",
                 "error_per_layer.png", "drift.png", "faithfulness.png"):
        assert (out / name).is_file(), name
    raw = load_file(str(out / "results.safetensors"))           # readable without bilens
    torch.testing.assert_close(raw["actual"], result.tensors["actual"])
    json.loads((out / "metrics.json").read_text())               # strict JSON
    back = VerifyResult.load(out)
    assert set(back.tensors) == set(result.tensors)
    assert back.metrics["modes"]["live"]["overall"] == pytest.approx(
        result.metrics["modes"]["live"]["overall"])
    assert report.verify_table(back) == report.verify_table(result)
    with pytest.raises(BilensError, match="exists; pass --force to replace it"):
        report.save_verify(result, out)                          # not without overwrite
    report.save_verify(result, out, overwrite=True)              # a result may be replaced


def test_save_is_atomic_and_careful(result, tmp_path, monkeypatch):
    import bilens.report.verify_plots

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bilens.report.verify_plots, "plot_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.save_verify(result, tmp_path / "v")
    assert list(tmp_path.iterdir()) == []                        # nothing half-written
    precious = tmp_path / "ckpt"
    precious.mkdir()
    (precious / "config.json").write_text("{}")
    with pytest.raises(BilensError, match="not a bilens verify result"):
        report.save_verify(result, precious)
    assert (precious / "config.json").exists()


def test_result_save_writes_the_data_files_only(result, tmp_path, monkeypatch):
    """`VerifyResult.save` is the data layer's: the two SPEC §7 files, atomically, with the
    same refusal to replace another tool's directory; the rendering is `report.save_verify`."""
    out = result.save(tmp_path / "v")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "results.safetensors"]
    assert set(VerifyResult.load(out).tensors) == set(result.tensors)
    import bilens.analysis.results

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bilens.analysis.results, "save_results", interrupted)
    with pytest.raises(KeyboardInterrupt):
        result.save(tmp_path / "w")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]   # nothing half-written
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(BilensError, match="not a bilens verify result"):
        result.save(other)
    assert (other / "notes.txt").exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from bilens.core.checkpoint import save

    torch.manual_seed(0)
    cfg = ModelConfig(d_in=64, d_model=16, d_hidden=8, n_layers=2, n_out=10)
    return save(BilinearNet(cfg), tmp_path_factory.mktemp("ck") / "m", {"dataset": "digits"})


def test_cli_writes_everything(checkpoint, tmp_path, capsys):
    out = tmp_path / "v"
    rc = main(["verify", str(checkpoint), "--dataset", "digits", "--n", "6", "--modes",
               "frozen,live", "--circuit-ks", "1,2", "--no-progress", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "frozen all" in text and "live all" in text and "faithfulness" in text
    assert {"results.safetensors", "metrics.json", "summary.md", "scatter.png"} <= {
        p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["info"]["n_inputs"] == 6 and metrics["info"]["dataset"] == "digits"
    assert "bilens verify" in (out / "summary.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--modes", "frozen,magic"], "--modes"),
    (["--baseline", "median"], "--baseline"),
    (["--layers", "a,b"], "--layers"),
    (["--layers", "7"], "layers"),
    (["--layers", ""], "no channel selected"),
    (["--n", "0"], "--n"),
    (["--target", "class:99"], "target"),
])
def test_cli_one_line_errors(checkpoint, tmp_path, capsys, argv, message):
    rc = main(["verify", str(checkpoint), "--n", "3", "--no-progress", "--out",
               str(tmp_path / "v"), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("bilens verify: error:") and message in err
    assert not (tmp_path / "v").exists()


def test_cli_refuses_to_replace_other_directories(checkpoint, capsys):
    rc = main(["verify", str(checkpoint), "--n", "3", "--out", str(checkpoint)])
    assert rc == 2 and "not a bilens verify result" in capsys.readouterr().err
    assert (checkpoint / "model.safetensors").exists()


def test_cli_missing_checkpoint(tmp_path, capsys):
    rc = main(["verify", str(tmp_path / "nope"), "--dataset", "digits", "--out",
               str(tmp_path / "v")])
    assert rc == 2 and "checkpoint" in capsys.readouterr().err


def test_a_lone_metrics_json_is_not_a_previous_result(result, checkpoint, tmp_path, capsys):
    """Another tool's directory that happens to hold a `metrics.json` must not be replaced
    (deleted) by `save` or `bilens verify --out`."""
    other = tmp_path / "experiment"
    other.mkdir()
    (other / "metrics.json").write_text("{}")
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(BilensError, match="not a bilens verify result"):
        report.save_verify(result, other, plots=False)
    rc = main(["verify", str(checkpoint), "--n", "3", "--no-progress", "--out", str(other)])
    assert rc == 2 and "not a bilens verify result" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["metrics.json", "notes.txt"]


def test_summary_command_reproduces_the_run(checkpoint, tmp_path):
    """The command in summary.md carries every option that changes the numbers."""
    import shlex

    out = tmp_path / "v"
    argv = ["verify", str(checkpoint), "--dataset", "digits", "--n", "3", "--baseline", "mean",
            "--reference-n", "40", "--circuit-ks", "1,3", "--no-plots", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 0
    line = (out / "summary.md").read_text().split("```")[1].strip()
    words = shlex.split(line)
    assert words[words.index("--reference-n") + 1] == "40"
    assert words[words.index("--circuit-ks") + 1] == "1,3"
    again = tmp_path / "again"
    assert main([*words[1:words.index("--out")], "--no-plots", "--no-progress",
                 "--out", str(again)]) == 0
    first = json.loads((out / "metrics.json").read_text())["modes"]["live"]["overall"]
    assert json.loads((again / "metrics.json").read_text())["modes"]["live"]["overall"] == first

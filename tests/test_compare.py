"""`compare` and `sweep`: caching keyed by the full config, `--force`, aggregation over
seeds, the verify summary re-derived from the raw tensors, and the commands end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from bilens.core.config import ModelConfig
from bilens.experiments.compare import (
    Runner,
    Spec,
    aggregate,
    cache_key,
    compare,
    summarize,
)
from bilens.experiments.stats import mean_std
from bilens.experiments.sweeps import sweep
from bilens.training.train import TrainConfig

TINY = Spec("synthetic", {"d_model": 8, "d_hidden": 8, "n_layers": 2},
            {"epochs": 1, "batch_size": 512, "lr": 3e-3})


def test_cache_key_covers_every_field_but_the_device():
    mc = ModelConfig(d_in=16, d_model=8, d_hidden=8, n_layers=2, n_out=4)
    tc = TrainConfig(epochs=1)
    key = cache_key("synthetic", mc, tc)
    assert cache_key("synthetic", mc, replace(tc, device="cpu")) == key
    changed = [cache_key("digits", mc, tc), cache_key("synthetic", replace(mc, eps=1e-6), tc),
               cache_key("synthetic", replace(mc, norm="layer"), tc),
               cache_key("synthetic", replace(mc, learnable_gain=False), tc),
               cache_key("synthetic", mc, replace(tc, l1=0.1)),
               cache_key("synthetic", mc, replace(tc, seed=1)),
               cache_key("synthetic", mc, replace(tc, input_noise=0.1))]
    assert len(set(changed) | {key}) == len(changed) + 1


def test_mean_std_and_aggregate_by_hand():
    assert mean_std([0.9, 1.0]) == pytest.approx((0.95, math.sqrt(0.005)))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_std([math.nan]))
    rows = [{"norm": "rms", "position": "post", "test_accuracy": a,
             "frozen": {"ne": ne, "ne_per_layer": [ne, 2 * ne]}}
            for a, ne in ((0.9, 0.1), (1.0, 0.3))]
    rows.append({"norm": "none", "position": "post", "test_accuracy": 0.5,
                 "frozen": {"ne": 0.0, "ne_per_layer": [0.0, 0.0]}})
    table = aggregate(rows, ("norm", "position"))
    rms = next(r for r in table if r["norm"] == "rms")
    assert rms["n_seeds"] == 2
    assert rms["test_accuracy"] == pytest.approx(0.95)
    assert rms["frozen.ne"] == pytest.approx(0.2)
    assert rms["frozen.ne_std"] == pytest.approx(math.sqrt(0.02))
    assert rms["frozen.ne_per_layer"] == pytest.approx([0.2, 0.4])
    assert math.isnan(rms["live.ne"])                      # absent -> NaN, not an error


def test_summary_rederived_from_tensors():
    from bilens.analysis.verify import verify

    torch.manual_seed(0)
    from bilens.core.models.mlp import BilinearNet

    model = BilinearNet(ModelConfig(d_in=6, d_model=10, d_hidden=12, n_layers=2, n_out=3,
                                    norm="rms")).double()
    result = verify(model, torch.randn(5, 6, dtype=torch.float64), progress=False)
    s = summarize(result.metrics)
    a = result.tensors["actual"]
    af = result.tensors["actual_frozen_norm"]
    for mode in ("frozen", "live"):
        p = result.tensors[f"predicted.{mode}"]
        assert s[mode]["ne"] == pytest.approx(((p - a).abs().sum() / a.abs().sum()).item())
        assert s[mode]["ne_per_layer"][1] == pytest.approx(
            ((p[:, 1] - a[:, 1]).abs().sum() / a[:, 1].abs().sum()).item())
    p = result.tensors["predicted.frozen"]
    drift, gating = (a - af).abs().sum().item(), (af - p).abs().sum().item()
    assert s["drift"]["ne_drift"] == pytest.approx(drift / a.abs().sum().item())
    assert s["drift"]["drift_share"] == pytest.approx(drift / (drift + gating))
    measured = result.tensors["drift.measured"].abs()
    assert s["drift"]["ds_over_s"] == pytest.approx(measured.mean().item())


def test_compare_caches_and_force_retrains(tmp_path):
    logs: list[str] = []
    first = compare("synthetic", seeds=2, out=tmp_path, spec=TINY, n_verify=4, device="cpu",
                    log=logs.append)
    trained = [line for line in logs if line.startswith("training")]
    assert len(trained) == 12                               # 3 norms x 2 positions x 2 seeds
    assert {(r["norm"], r["position"]) for r in first.table} == {
        (n, p) for n in ("none", "rms", "layer") for p in ("post", "pre")}
    # the table's accuracy is the mean over the two seeds of what the checkpoints recorded
    for row in first.table:
        accs = [json.loads((tmp_path / "models" / r["model_dir"].split("/")[-1] /
                            "config.json").read_text())["test_accuracy"]
                for r in first.rows if (r["norm"], r["position"]) == (row["norm"],
                                                                      row["position"])]
        assert row["test_accuracy"] == pytest.approx(sum(accs) / 2)

    logs.clear()
    again = compare("synthetic", seeds=2, out=tmp_path, spec=TINY, n_verify=4, device="cpu",
                    log=logs.append)
    assert len(logs) == 12 and all(line.startswith("reusing cached model") for line in logs)
    assert [r["frozen"]["ne"] for r in again.rows] == [r["frozen"]["ne"] for r in first.rows]
    assert all(r["reused"] for r in again.rows)

    logs.clear()
    changed = TINY.with_(train={"epochs": 2})                # a new config is not a cache hit
    Runner(tmp_path / "models", device="cpu", n_verify=4, log=logs.append).evaluate(
        changed.with_(model={"norm": "rms"}))
    assert logs and logs[0].startswith("training")

    logs.clear()
    compare("synthetic", seeds=1, out=tmp_path, spec=TINY, n_verify=4, device="cpu",
            force=True, log=logs.append)
    assert len(logs) == 6 and all(line.startswith("training") for line in logs)
    assert (tmp_path / "compare.json").is_file()


def test_sweep_varies_one_field(tmp_path):
    result = sweep("depth", "synthetic", out=tmp_path, values=(1, 3), epochs=1, n_verify=3,
                   device="cpu", log=None)
    assert [r["n_layers"] for r in result.rows] == [1, 3]
    assert [len(r["frozen"]["ne_per_layer"]) for r in result.rows] == [1, 3]
    assert {r["d_model"] for r in result.rows} == {32}      # the synthetic preset's width
    sparsity = sweep("sparsity", "synthetic", values=(0.0, 1.0), epochs=1, n_verify=3,
                     device="cpu", log=None, cache_dir=tmp_path / "m")
    assert [r["l1"] for r in sparsity.rows] == [0.0, 1.0]
    assert {r["d_model"] for r in sparsity.rows} == {256}   # the seed's setting


def _bilens(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in this process (no interpreter start-up per call)."""
    from bilens.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_compare_and_sweep(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    args = ("compare", "--dataset", "synthetic", "--out", out, "--epochs", "1",
            "--n-verify", "3", "--device", "cpu")
    code, stdout, err = _bilens(capsys, *args)
    assert code == 0, err
    assert "NE frozen" in stdout and "LayerNorm breaks attribution" in stdout
    assert (tmp_path / "cmp" / "report" / "report.html").is_file()
    _, stdout, _ = _bilens(capsys, *args)
    assert stdout.count("reusing cached model") == 6
    _, stdout, _ = _bilens(capsys, *args, "--force")
    assert "reusing" not in stdout and stdout.count("training synthetic") == 6
    code, _, err = _bilens(capsys, "sweep", "d_model", "--dataset", "synthetic", "--values",
                           "8,16", "--out", str(tmp_path / "sw"), "--epochs", "1",
                           "--n-verify", "3", "--device", "cpu")
    assert code == 0, err
    data = json.loads((tmp_path / "sw" / "sweep-d_model.json").read_text())
    assert [r["d_model"] for r in data["rows"]] == [8, 16]
    assert (tmp_path / "sw" / "report" / "sweep-d_model.png").is_file()


@pytest.mark.parametrize("args, needle", [
    (("sweep", "depth", "--values", "1,x", "--out", "o"), "--values"),
    (("compare", "--seeds", "0", "--out", "o", "--dataset", "synthetic"), "seeds"),
])
def test_cli_bad_input_is_one_line(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _bilens(capsys, *args)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1


def test_cli_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "bilens", "compare", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--seeds" in res.stdout and "--force" in res.stdout


def test_demo_prints_tables_and_writes_report(tmp_path, capsys):
    code, stdout, err = _bilens(capsys, "demo", "--out", str(tmp_path), "--seeds", "1",
                                "--epochs", "1", "--steps", "5", "--lm-n-verify", "4", "--quiet")
    assert code == 0, err
    assert "Comparison (digits):" in stdout and "The seed's claims:" in stdout
    mlp_part, _, lm_part = stdout.partition("Comparison (language models, synthetic-lm):")
    assert "Recommendation:" in mlp_part and "NOT MEASURED" not in mlp_part
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    # issue 15: the synthetic-lm section, every configuration verified in every mode
    lm = report["lm"]
    assert {(r["norm"], r["position"]) for r in lm["compare"]["table"]} == {
        (n, p) for n in ("none", "rms", "layer") for p in ("pre", "post")}
    assert all(math.isfinite(r[f"{m}.ne"]) for r in lm["compare"]["table"]
               for m in ("frozen", "frozen-norm", "live", "renorm"))
    unmeasured = {c["id"] for c in lm["claims"] if c["verdict"] == "not measured"}
    assert unmeasured == {"sparsity", "d_model", "compounding"}     # the demo sweeps no LMs
    assert "Recommendation for language models:" in lm_part and report["combined"]["text"]
    assert {r["dataset"] for r in report["lm"]["decomposition"]["records"]} == {"synthetic-lm"}
    assert set(report["sweeps"]) == {"d_model", "sparsity", "depth", "position"}
    assert len(report["claims"]) == 11
    assert {c["verdict"] for c in report["claims"]} <= {"holds", "partly", "fails"}
    assert all(math.isfinite(r["renorm.ne"]) for r in report["compare"]["table"])
    # issue 12 item 19: every model verified for the margin target too, and shown
    assert all(math.isfinite(r[f"margin.{m}.ne"]) for r in report["compare"]["table"]
               for m in ("frozen", "live", "renorm"))
    assert "margin: NE frozen" in stdout
    # issue 16: the demo decomposes its models; the claim and the report's sections use them
    assert report["claims"][10]["id"] == "features_intact"
    assert {(r["norm"], r["position"]) for r in report["decomposition"]["records"]} == {
        (n, p) for n in ("none", "rms", "layer") for p in ("post", "pre")}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Weight-based decomposition" in md
    assert md.count("### Decomposition: ") == 5            # no norm once
    assert (tmp_path / "report" / "decomposition-rms-pre-eigenvectors.png").is_file()

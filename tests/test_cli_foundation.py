"""`bilens train` and `bilens info`: output, checkpoint, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bilens.cli import main
from bilens.core.checkpoint import load

TINY = ["--dataset", "synthetic", "--d-model", "16", "--d-hidden", "32", "--layers", "2",
        "--epochs", "1", "--n-train", "512", "--device", "cpu", "--no-progress"]


def test_train_writes_a_checkpoint_and_prints_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--norm", "layer", "--position", "pre", "--l1", "0.01",
                 "--seed", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "active fraction" in printed
    model = load(out)
    assert model.config.norm == "layer" and model.config.norm_position == "pre"
    assert model.metadata["seed"] == 2 and model.metadata["training"]["l1"] == 0.01
    assert f"{model.metadata['test_accuracy']:.4f}" in printed


def test_info(synthetic_checkpoint, capsys):
    assert main(["info", synthetic_checkpoint]) == 0
    text = capsys.readouterr().out
    assert "parameters:" in text and "norm: rms" in text and "dataset: synthetic" in text
    assert main(["info", synthetic_checkpoint, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["n_layers"] == 2 and info["n_params"] > 0


def _one_line_error(argv, capsys, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


@pytest.mark.parametrize("argv,fragment", [
    (["train", "--dataset", "cifar", "--out", "x"], "digits, mnist, fashion-mnist, synthetic"),
    (["train", *TINY, "--norm", "batch"], "config.norm"),
    (["train", *TINY, "--position", "middle"], "config.norm_position"),
    (["train", *TINY, "--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
    (["train", *TINY, "--d-model", "0"], "argument --d-model: expected a positive integer"),
    (["train", *TINY, "--n-train", "999999"], "n: expected"),
])
def test_train_errors_are_one_line(tmp_path, capsys, argv, fragment):
    _one_line_error(argv + ["--out", str(tmp_path / "never")], capsys, fragment)
    assert not (tmp_path / "never").exists()


def test_info_errors_are_one_line(tmp_path, capsys, synthetic_checkpoint):
    _one_line_error(["info", str(tmp_path / "missing")], capsys, "not found")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bad / name).write_bytes(open(os.path.join(synthetic_checkpoint, name), "rb").read())
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "d_hidden": 33}))
    _one_line_error(["info", str(bad)], capsys, "'layers.0.L' has shape [32, 16]")


def test_console_script_exit_status(tmp_path):
    """The real entry point, in a fresh process: one stderr line and exit status 2."""
    proc = subprocess.run([sys.executable, "-m", "bilens", "info", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "bilens info: error:" in proc.stderr

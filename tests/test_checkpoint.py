"""Checkpoints (SPEC §6): exact round trip, foreign checkpoints, and every bad file refused
with a message naming what is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CASES, tiny_model
from safetensors.torch import load_file, save_file

from bilens.core import checkpoint
from bilens.core.checkpoint import load, save
from bilens.core.errors import BilensError


@pytest.mark.parametrize("norm,position", CASES)
def test_round_trip_is_exact(tmp_path, norm, position):
    model = tiny_model(norm, position, seed=1, dtype=torch.float32)
    meta = {"dataset": "digits", "test_accuracy": 0.97, "seed": 1, "training": {"lr": 0.003}}
    save(model, tmp_path / "ckpt", meta)
    loaded = load(tmp_path / "ckpt")
    assert loaded.config == model.config
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = torch.randn(4, 5)
    assert torch.equal(loaded(x), model(x))
    assert loaded.metadata["dataset"] == "digits" and loaded.metadata["training"] == {"lr": 0.003}
    assert "version" in loaded.metadata and not loaded.training
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json",
                                                                     "model.safetensors"]


def test_spec_tensor_names(tmp_path):
    save(tiny_model("layer", "pre", n_layers=2), tmp_path / "c")
    names = set(load_file(str(tmp_path / "c" / "model.safetensors")))
    assert names == {"embed.weight", "head.weight", "final_norm.weight", "final_norm.bias",
                     *(f"layers.{i}.{t}" for i in range(2)
                       for t in ("L", "R", "D", "norm.weight", "norm.bias"))}
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    for key in ("d_in", "d_model", "d_hidden", "n_layers", "n_out", "norm", "norm_position", "eps"):
        assert key in cfg


def test_dtype_and_float64(tmp_path):
    save(tiny_model(dtype=torch.float64), tmp_path / "c")
    assert load(tmp_path / "c").dtype == torch.float64
    assert load(tmp_path / "c", dtype=torch.float32).dtype == torch.float32


def _foreign(tmp_path, tensors=None, config=None):
    """A post-norm RMS checkpoint written without bilens, from SPEC §6 alone (no metadata);
    `tensors(t)` edits the tensors and `config` overrides config.json keys."""
    d, h, n_in, n_out, n_layers = 6, 7, 5, 4, 2
    g = torch.Generator().manual_seed(0)
    t = {"embed.weight": torch.randn(d, n_in, generator=g),
         "head.weight": torch.randn(n_out, d, generator=g)}
    for i in range(n_layers):
        t[f"layers.{i}.L"] = torch.randn(h, d, generator=g)
        t[f"layers.{i}.R"] = torch.randn(h, d, generator=g)
        t[f"layers.{i}.D"] = torch.randn(d, h, generator=g)
        t[f"layers.{i}.norm.weight"] = torch.ones(d)
    cfg = {"d_in": n_in, "d_model": d, "d_hidden": h, "n_layers": n_layers, "n_out": n_out,
           "norm": "rms", "norm_position": "post", "eps": 1e-5, **(config or {})}
    if tensors is not None:
        tensors(t)
    root = tmp_path / "foreign"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(cfg))
    save_file(t, str(root / "model.safetensors"))
    return root


def test_foreign_checkpoint_without_metadata_loads(tmp_path):
    model = load(_foreign(tmp_path))
    assert model.metadata == {} and model.config.n_layers == 2
    assert model(torch.randn(3, 5)).shape == (3, 4)


@pytest.mark.parametrize("break_it,fragment", [
    (lambda t: t.pop("layers.1.R"), "'layers.1.R' is missing"),
    (lambda t: t.update({"layers.0.D": torch.zeros(6, 8)}), "'layers.0.D' has shape [6, 8]"),
    (lambda t: t.update({"layers.0.gate": torch.zeros(3)}), "unknown tensor 'layers.0.gate'"),
    (lambda t: t.update({"layers.0.L": torch.full((7, 6), float("nan"))}),
     "'layers.0.L' contains NaN"),
    (lambda t: t.update({"head.weight": torch.zeros(4, 6, dtype=torch.int32)}),
     "'head.weight' has dtype torch.int32"),
])
def test_bad_tensors_are_named(tmp_path, break_it, fragment):
    with pytest.raises(BilensError) as err:
        load(_foreign(tmp_path, tensors=break_it))
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides,fragment", [
    ({"n_layers": 3}, "'layers.2.L' is missing"),
    ({"n_layers": 1}, "unknown tensor 'layers.1."),
    ({"d_model": 8}, "'embed.weight' has shape [6, 5], expected [8, 5]"),
    ({"norm": "layer"}, "'layers.0.norm.bias' is missing"),
    ({"norm": "none"}, "unknown tensor 'layers.0.norm.weight'"),
    ({"norm_position": "pre"}, "'final_norm.weight' is missing"),
    ({"norm": "batch"}, "config.norm"),
    ({"d_hidden": "7"}, "config.d_hidden"),
])
def test_config_contradicting_tensors(tmp_path, overrides, fragment):
    with pytest.raises(BilensError) as err:
        load(_foreign(tmp_path, config=overrides))
    assert fragment in str(err.value)


@pytest.mark.parametrize("key", ["norm", "norm_position", "eps", "d_model"])
def test_config_missing_a_spec_key_is_refused(tmp_path, key):
    """SPEC §6 lists these keys as required: guessing a default could load the wrong network."""
    root = _foreign(tmp_path)
    cfg = json.loads((root / "config.json").read_text())
    del cfg[key]
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BilensError, match=f"missing.*'{key}'"):
        load(root)


def test_bad_files(tmp_path):
    with pytest.raises(BilensError, match="not found"):
        load(tmp_path / "nowhere")
    root = _foreign(tmp_path)
    (root / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(BilensError, match="model.safetensors is unreadable or corrupt"):
        load(root)
    (root / "model.safetensors").unlink()
    with pytest.raises(BilensError, match="model.safetensors not found"):
        load(root)
    (root / "config.json").write_text("{not json")
    with pytest.raises(BilensError, match="config.json is not valid JSON"):
        load(root)
    (root / "config.json").write_text("[1, 2]")
    with pytest.raises(BilensError, match="JSON object"):
        load(root)
    (root / "config.json").unlink()
    with pytest.raises(BilensError, match="config.json not found"):
        load(root)
    (root / "config.json").write_text(json.dumps({"d_in": 5}))
    with pytest.raises(BilensError, match="missing"):
        load(root)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = tiny_model()
    save(model, tmp_path / "c", {"dataset": "old"})

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    import safetensors.torch
    monkeypatch.setattr(safetensors.torch, "save_file", explode)
    with pytest.raises(KeyboardInterrupt):
        save(model, tmp_path / "c", {"dataset": "new"}, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        save(model, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temp dirs, no "fresh"
    assert load(tmp_path / "c").metadata["dataset"] == "old"


def test_bad_metadata(tmp_path):
    with pytest.raises(BilensError, match="overwrite the model config"):
        save(tiny_model(), tmp_path / "c", {"d_model": 3})
    with pytest.raises(BilensError, match="JSON-serializable"):
        save(tiny_model(), tmp_path / "c", {"x": torch.zeros(2)})
    assert not (tmp_path / "c").exists()


def test_describe(synthetic_checkpoint):
    info = checkpoint.describe(load(synthetic_checkpoint))
    assert info["n_params"] == 16 * 16 + 2 * (3 * 16 * 32 + 16) + 4 * 16
    assert 0 <= info["test_accuracy"] <= 1 and info["metadata"]["dataset"] == "synthetic"


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path, capsys):
    """`save` replaces its directory whole: a directory of other files must be left alone
    (and `bilens train --out` must say so before training)."""
    from bilens.cli import main

    other = tmp_path / "project"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(BilensError, match="not a checkpoint"):
        save(tiny_model(), other)
    rc = main(["train", "--dataset", "synthetic", "--d-model", "4", "--d-hidden", "4",
               "--layers", "1", "--epochs", "1", "--no-progress", "--out", str(other)])
    assert rc == 2 and "not a checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    save(tiny_model(), tmp_path / "empty")
    with pytest.raises(BilensError, match="exists; pass --force to replace it"):
        save(tiny_model(), tmp_path / "empty", {"dataset": "again"})  # a checkpoint: kept
    save(tiny_model(), tmp_path / "empty", {"dataset": "again"}, overwrite=True)  # replaced
    assert load(tmp_path / "empty").metadata["dataset"] == "again"
    with pytest.raises(BilensError, match="not a checkpoint"):        # never, even so
        save(tiny_model(), other, overwrite=True)


def test_save_interrupted_between_the_renames_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    """Replacing a checkpoint renames the old one aside, then the new one in: an interrupt
    in between must put the old one back, not leave no checkpoint at all."""
    from pathlib import Path

    save(tiny_model(), tmp_path / "c", {"dataset": "old"})
    rename = Path.rename
    calls = []

    def second_rename_interrupted(self, target):
        calls.append(self)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", second_rename_interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(tiny_model(), tmp_path / "c", {"dataset": "new"}, overwrite=True)
    monkeypatch.setattr(Path, "rename", rename)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert load(tmp_path / "c").metadata["dataset"] == "old"

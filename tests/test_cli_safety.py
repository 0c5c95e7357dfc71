"""No command destroys a user's files (issue 12, items 1 and 2): `attribute --out` never
writes over a file bilens did not write as an attribution result, nor into a checkpoint;
no command and no `save` replaces an earlier result without `--force` / `overwrite=True`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from bilens.cli import main
from bilens.core.checkpoint import load
from bilens.core.errors import BilensError

TINY = ["--dataset", "synthetic", "--d-model", "8", "--d-hidden", "8", "--layers", "1",
        "--epochs", "1", "--n-train", "256", "--device", "cpu", "--no-progress"]


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture
def ck(synthetic_checkpoint, tmp_path):
    """A copy of the session's checkpoint that a test may (try to) damage."""
    return shutil.copytree(synthetic_checkpoint, tmp_path / "ck")


def _unchanged(ck, before: dict[str, bytes]) -> None:
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    load(ck)                                                # still a whole checkpoint


def test_attribute_never_touches_a_checkpoint(ck, capsys):
    """`--out ck/model.safetensors` destroyed the checkpoint; `--out ck/config.safetensors`
    rewrote `ck/config.json`; any name inside a checkpoint directory is refused."""
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    for name in ("model.safetensors", "config.safetensors", "attr.safetensors"):
        for force in ([], ["--force"]):
            err = _error(["attribute", str(ck), "--n", "2", *force,
                          "--out", str(ck / name)], capsys)
            assert "inside the checkpoint directory" in err and "--out" in err
    _unchanged(ck, before)


def test_attribute_never_writes_over_another_file(synthetic_checkpoint, tmp_path, capsys):
    """A `.safetensors` (or its sibling `.json`) that bilens did not write as an attribution
    result is refused, even with `--force`; the file names the fix."""
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(3)}, str(other))
    data = other.read_bytes()
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')
    verify_out = tmp_path / "v"
    assert main(["verify", synthetic_checkpoint, "--n", "2", "--no-plots", "--no-progress",
                 "--circuit-ks", "", "--out", str(verify_out)]) == 0
    capsys.readouterr()
    verify_file = verify_out / "results.safetensors"
    verify_data = verify_file.read_bytes()
    for out in (other, tmp_path / "notes.safetensors", verify_file):
        for force in ([], ["--force"]):
            err = _error(["attribute", synthetic_checkpoint, "--n", "2", *force,
                          "--out", str(out)], capsys)
            assert "is not a bilens attribute result" in err and "choose another --out" in err
    assert other.read_bytes() == data and notes.read_text() == '{"mine": 1}\n'
    assert verify_file.read_bytes() == verify_data
    assert not (tmp_path / "weights.json").exists()
    assert not (tmp_path / "notes.safetensors").exists()


def test_attribute_replaces_its_own_result_only_with_force(synthetic_checkpoint, tmp_path,
                                                           capsys):
    out = tmp_path / "attr.safetensors"
    argv = ["attribute", synthetic_checkpoint, "--n", "2", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "attr.json").read_text())
    assert summary["format"] == "bilens-results/1" and summary["command"] == "attribute"
    first = out.read_bytes()
    err = _error([*argv[:-2], "--seed", "1", "--out", str(out)], capsys)
    assert "exists; pass --force to replace it" in err
    assert out.read_bytes() == first
    assert main([*argv[:-2], "--seed", "1", "--force", "--out", str(out)]) == 0
    assert out.read_bytes() != first


def test_save_results_refuses_without_overwrite(tmp_path):
    from bilens.analysis.results import save_results

    path = tmp_path / "r.safetensors"
    save_results(path, {"a": torch.zeros(2)}, {"command": "x"})
    with pytest.raises(BilensError, match="exists; pass --force to replace it"):
        save_results(path, {"a": torch.ones(2)}, {"command": "x"})
    save_results(path, {"a": torch.ones(2)}, {"command": "x"}, overwrite=True)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(BilensError, match="not a bilens result"):
        save_results(tmp_path / "other.safetensors", {"a": torch.ones(2)}, {}, overwrite=True)


def test_train_keeps_an_existing_checkpoint_without_force(tmp_path, capsys):
    """A 99% model was replaced by an 89% one, exit 0: now refused before training."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--seed", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = _error(["train", *TINY, "--seed", "1", "--out", str(out)], capsys)
    assert f"checkpoint: {str(out)!r} exists; pass --force to replace it" in err
    _unchanged(out, before)
    assert main(["train", *TINY, "--seed", "1", "--force", "--out", str(out)]) == 0
    assert load(out).metadata["seed"] == 1


def test_verify_keeps_an_earlier_result_without_force(synthetic_checkpoint, tmp_path, capsys):
    out = tmp_path / "v"
    argv = ["verify", synthetic_checkpoint, "--n", "2", "--no-plots", "--no-progress",
            "--circuit-ks", "", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    before = (out / "metrics.json").read_bytes()
    err = _error([*argv, "--seed", "1"], capsys)
    assert "exists; pass --force to replace it" in err
    assert (out / "metrics.json").read_bytes() == before
    assert main([*argv, "--seed", "1", "--force"]) == 0
    assert (out / "metrics.json").read_bytes() != before


def test_verify_result_save_needs_overwrite(make_model, tmp_path):
    import bilens
    from bilens import report

    result = bilens.verify(make_model(), torch.randn(2, 5, dtype=torch.float64), circuit_ks=[],
                           progress=False)
    result.save(tmp_path / "v")
    with pytest.raises(BilensError, match="exists; pass --force to replace it"):
        result.save(tmp_path / "v")
    with pytest.raises(BilensError, match="exists; pass --force to replace it"):
        report.save_verify(result, tmp_path / "v", plots=False)
    result.save(tmp_path / "v", overwrite=True)
    report.save_verify(result, tmp_path / "v", plots=False, overwrite=True)
    assert (tmp_path / "v" / "summary.md").is_file()

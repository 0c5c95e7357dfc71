"""`bilens import`: a checkpoint in the published bilinear-transformer layout (random
weights, written here with safetensors) converts into SPEC §9 exactly, and what cannot be
represented is refused with one line, a non-zero exit and no partial files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference_lm import published_forward
from safetensors.torch import save_file

import bilens
from bilens.cli import main
from bilens.core.errors import BilensError
from bilens.core.published import import_published

SHAPE = {"n_head": 2, "n_layer": 2, "n_ctx": 12, "d_model": 8, "d_hidden": 10}
VOCAB = 300


def published(tmp_path, normalization: bool = True, seed: int = 0, **overrides):
    """A directory in the published layout; returns (dir, config, numpy tensors)."""
    cfg = {**SHAPE, "bilinear": True, "gate": None, "bias": False,
           "normalization": normalization, "tokenizer": "test-bpe", "vocab_size": VOCAB,
           **overrides}
    g = torch.Generator().manual_seed(seed)
    d, H = cfg["d_model"], cfg["d_hidden"]

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64) / shape[-1] ** 0.5

    tensors = {"transformer.wte.weight": rnd(VOCAB, d) * d ** 0.5,
               "lm_head.weight": rnd(VOCAB, d)}
    for l in range(cfg["n_layer"]):
        tensors[f"transformer.h.{l}.attn.qkv.weight"] = rnd(3 * d, d) * 2
        tensors[f"transformer.h.{l}.attn.o.weight"] = rnd(d, d)
        tensors[f"transformer.h.{l}.mlp.w.weight"] = rnd(2 * H, d)
        tensors[f"transformer.h.{l}.mlp.p.weight"] = rnd(d, H)
    src = tmp_path / f"published-{normalization}-{seed}"
    src.mkdir()
    save_file(tensors, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(cfg))
    return src, cfg, {k: v.numpy() for k, v in tensors.items()}


@pytest.mark.parametrize("normalization", [True, False])
def test_import_reproduces_the_published_forward(tmp_path, normalization):
    src, cfg, tensors = published(tmp_path, normalization)
    out = import_published(src, tmp_path / "ours")
    model = bilens.load(out, dtype=torch.float64)
    assert model.config.norm == ("rms" if normalization else "none")
    x = torch.randint(VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, run = model(x).numpy(), model.run(x).logits.numpy()
    theirs = np.stack([published_forward(tensors, cfg, row.tolist()) for row in x])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)
    np.testing.assert_allclose(run, theirs, rtol=0, atol=1e-10)
    assert model.metadata["tokenizer_name"] == "test-bpe"


def test_import_copies_the_tokenizer(tmp_path):
    from bilens.core.tokenizer import train_tokenizer

    src, _, _ = published(tmp_path)
    tok = train_tokenizer(["in the beginning was the word"] * 20, vocab_size=270)
    tok.save(str(src / "tokenizer.json"))
    assert main(["import", str(src), "--out", str(tmp_path / "ours")]) == 0
    model = bilens.load(tmp_path / "ours")
    assert model.tokenizer.encode("the word").ids == tok.encode("the word").ids


def _refused(tmp_path, src, capsys, match: str) -> None:
    out = tmp_path / "refused"
    assert main(["import", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]


def test_gated_checkpoint_is_refused(tmp_path, capsys):
    src, _, _ = published(tmp_path, gate="silu")
    _refused(tmp_path, src, capsys, "gate='silu'")


def test_biased_checkpoint_is_refused(tmp_path, capsys):
    src, _, _ = published(tmp_path, bias=True)
    _refused(tmp_path, src, capsys, "bias=true")


def test_bias_tensors_are_refused_even_when_the_config_denies_them(tmp_path, capsys):
    src, _, _ = published(tmp_path)
    from safetensors.torch import load_file
    tensors = load_file(str(src / "model.safetensors"))
    tensors["transformer.h.0.mlp.p.bias"] = torch.zeros(8, dtype=torch.float64)
    save_file(tensors, str(src / "model.safetensors"))
    _refused(tmp_path, src, capsys, "holds biases")


def test_non_bilinear_mlp_is_refused(tmp_path, capsys):
    src, _, _ = published(tmp_path, bilinear=False)
    _refused(tmp_path, src, capsys, "bilinear=False")


def test_pickled_weights_are_refused_never_unpickled(tmp_path, capsys):
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({**SHAPE, "bilinear": True, "gate": None}))
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04 not a pickle bilens would ever open")
    _refused(tmp_path, src, capsys, "never unpickles")


def test_config_contradicting_tensors_is_refused(tmp_path, capsys):
    src, _, _ = published(tmp_path, d_hidden=12)       # the tensors were made with 12, ...
    cfg = json.loads((src / "config.json").read_text())
    cfg["d_hidden"] = 9                                # ... the config now says 9
    (src / "config.json").write_text(json.dumps(cfg))
    _refused(tmp_path, src, capsys, "contradicts the tensors")
    cfg["d_hidden"], cfg["n_layer"] = 12, 3
    (src / "config.json").write_text(json.dumps(cfg))
    _refused(tmp_path, src, capsys, "is missing")


def test_import_refuses_to_overwrite_without_force(tmp_path):
    src, _, _ = published(tmp_path)
    assert main(["import", str(src), "--out", str(tmp_path / "ours")]) == 0
    assert main(["import", str(src), "--out", str(tmp_path / "ours")]) == 2
    assert main(["import", str(src), "--out", str(tmp_path / "ours"), "--force"]) == 0


def test_import_of_a_missing_directory(tmp_path):
    with pytest.raises(BilensError, match="not a directory"):
        import_published(tmp_path / "nothing", tmp_path / "out")

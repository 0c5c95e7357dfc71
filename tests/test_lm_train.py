"""Training the sequence model and its command line: deterministic on the CPU, a trained
model still equals the SPEC §9 reference, checkpoints round-trip with their tokenizer,
and bad input leaves one clear line and no partial files."""

from __future__ import annotations

import json

import pytest
import torch
from reference_lm import reference_forward

import bilens
from bilens.cli import main
from bilens.core.config import TransformerConfig
from bilens.core.synthetic_lm import synthetic_lm
from bilens.training.lm import LMTrainConfig, evaluate, train_lm

TINY = dict(d_model=16, d_hidden=16, n_layers=2, n_heads=2)


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_lm(32, seed=0, n_train=256, n_test=32)


def _train(data, norm="layer", position="post", seed=0, steps=15):
    cfg = TransformerConfig(vocab_size=64, n_ctx=32, norm=norm, norm_position=position, **TINY)
    tc = LMTrainConfig(steps=steps, batch_size=8, seed=seed, device="cpu")
    return train_lm(cfg, tc, data, progress=False)


def test_training_is_deterministic_and_records_its_numbers(synthetic):
    a, b = _train(synthetic), _train(synthetic)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                            strict=True):
        assert torch.equal(p, q), name
    assert a.val_loss == b.val_loss and a.perplexity == pytest.approx(torch.e ** a.val_loss)
    assert set(a.rule_accuracy) == {"bigram", "skip-trigram", "induction"}
    assert a.metadata["val_loss"] == a.val_loss
    assert set(a.metadata["baselines"]) == {"unigram_loss", "bigram_loss", "bigram_beta"}
    assert _train(synthetic, seed=1).val_loss != a.val_loss


@pytest.mark.parametrize("norm,position", [("rms", "pre"), ("layer", "post"), ("none", "pre")])
def test_a_trained_model_equals_the_reference(synthetic, norm, position):
    model = _train(synthetic, norm, position).model.double()
    x = synthetic.test[:2, :10]
    want = torch.stack([reference_forward(model.state_dict(), model.config.to_dict(),
                                          r.tolist()) for r in x])
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)


def test_evaluate_counts_rule_positions(synthetic):
    model = _train(synthetic).model
    scores = evaluate(model, synthetic.test, synthetic.rules)
    logits = model(synthetic.test[:, :-1])
    right = logits.argmax(-1) == synthetic.test[:, 1:]
    mask = synthetic.rules["bigram"]
    assert scores["rule_accuracy"]["bigram"] == pytest.approx(float(right[mask].float().mean()))


@pytest.fixture
def story(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("".join(f"The {w} went to the market and bought {i} apples.\n"
                            for i, w in enumerate(["cat", "dog", "fox", "owl"] * 40)))
    return path


def _cli_train(story, out, *extra):
    return main(["train", "--kind", "transformer", "--dataset", str(story), "--d-model", "16",
                 "--d-hidden", "16", "--layers", "1", "--heads", "2", "--seq-len", "16",
                 "--steps", "10", "--vocab-size", "300", "--no-progress", "--out", str(out),
                 *extra])


def test_cli_train_info_sample(tmp_path, story, capsys):
    out = tmp_path / "lm"
    assert _cli_train(story, out) == 0
    assert "held-out loss" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors",
                                               "tokenizer.json"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "transformer" and cfg["n_ctx"] == 16 and "val_loss" in cfg
    model = bilens.load(out)
    assert model.tokenizer is not None and model.metadata["val_loss"] == cfg["val_loss"]
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "kind: transformer" in info and "val_loss:" in info and "byte-level BPE" in info
    assert "layers.0.attn.q.weight: [16, 16]" in info
    assert main(["sample", str(out), "--prompt", "The cat", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The cat")
    assert main(["sample", str(out), "--prompt", "The", "--tokens", "40",
                 "--temperature", "0.8"]) == 0          # outgrows n_ctx: reads the last 16


def test_cli_refuses_to_overwrite_without_force(tmp_path, story, capsys):
    out = tmp_path / "lm"
    assert _cli_train(story, out) == 0
    before = (out / "model.safetensors").read_bytes()
    assert _cli_train(story, out, "--seed", "1") == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert _cli_train(story, out, "--seed", "1", "--force") == 0


@pytest.mark.parametrize("content,match", [(b"", "is empty"), (b"caf\xe9\n" * 30, "not UTF-8")])
def test_cli_bad_text_file_leaves_nothing(tmp_path, capsys, content, match):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    out = tmp_path / "never"
    assert _cli_train(bad, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.txt"]


def test_cli_sample_refuses_bad_tokens(tmp_path, story, capsys):
    out = tmp_path / "lm"
    assert _cli_train(story, out) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--ids", "1,2,99999", "--tokens", "2"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_cli_points_a_sequence_dataset_at_kind_transformer(capsys):
    assert main(["train", "--dataset", "synthetic-lm"]) == 2
    assert "--kind transformer" in capsys.readouterr().err


def test_cli_train_on_token_rows(tmp_path, capsys):
    from safetensors.torch import save_file

    rows = torch.randint(20, (40, 13))
    save_file({"tokens": rows}, str(tmp_path / "rows.safetensors"))
    out = tmp_path / "lm"
    assert main(["train", "--kind", "transformer", "--dataset", str(tmp_path / "rows.safetensors"),
                 "--d-model", "8", "--d-hidden", "8", "--layers", "1", "--steps", "3",
                 "--no-progress", "--out", str(out)]) == 0
    model = bilens.load(out)
    assert model.config.n_ctx == 12 and model.config.vocab_size == int(rows.max()) + 1
    assert model.tokenizer is None and not (out / "tokenizer.json").exists()


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, story):
    from bilens.core.errors import BilensError
    from bilens.core.tokenizer import train_tokenizer

    out = tmp_path / "lm"
    assert _cli_train(story, out) == 0
    cfg = json.loads((out / "config.json").read_text())
    train_tokenizer([story.read_text()] * 3, vocab_size=cfg["vocab_size"] + 40).save(
        str(out / "tokenizer.json"))
    with pytest.raises(BilensError, match="tokens but config.json says vocab_size"):
        bilens.load(out)

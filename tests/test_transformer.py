"""The bilinear transformer (SPEC §9) against a slow float64 reference written from the SPEC,
and the properties its analysis relies on: frozen statistics and patterns, patched z,
causality, batching."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize_norms
from reference_lm import reference_forward

from bilens.core.config import TransformerConfig
from bilens.core.errors import BilensError
from bilens.core.models.intervention import Intervention
from bilens.core.models.transformer import BilinearTransformer

CASES = [(n, p) for n in ("none", "rms", "layer") for p in ("pre", "post")]
VOCAB, CTX = 11, 9


def tiny_lm(norm: str = "rms", position: str = "pre", seed: int = 0, attn_scale: float = 0.7,
            dtype: torch.dtype = torch.float64, **sizes: int) -> BilinearTransformer:
    """A small random transformer with non-trivial gains and biases."""
    shape = {"vocab_size": VOCAB, "n_ctx": CTX, "d_model": 8, "d_hidden": 6, "n_layers": 2,
             "n_heads": 2, **sizes}
    cfg = TransformerConfig(**shape, norm=norm, norm_position=position, attn_scale=attn_scale,
                            rope_base=50.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BilinearTransformer(cfg).to(dtype)
    return randomize_norms(model, gen, dtype)


def tokens(batch: int = 3, T: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm,position", CASES)
def test_forward_equals_the_spec_reference(norm, position):
    model = tiny_lm(norm, position)
    x = tokens()
    sd, cfg = model.state_dict(), model.config.to_dict()
    want = torch.stack([reference_forward(sd, cfg, row.tolist()) for row in x])
    torch.testing.assert_close(model.run(x).logits, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)   # the sdpa path


@pytest.mark.parametrize("norm,position", [("rms", "pre"), ("layer", "post")])
def test_attn_scale_matters(norm, position):
    """A reference that ignored alpha would pass with alpha = 1 only."""
    x = tokens()
    a, b = tiny_lm(norm, position, attn_scale=1.0), tiny_lm(norm, position, attn_scale=0.3)
    assert (a(x) - b(x)).abs().max() > 1e-3


@pytest.mark.parametrize("norm,position", CASES)
def test_frozen_statistics_and_patterns_equal_to_the_clean_ones_change_nothing(norm, position):
    model = tiny_lm(norm, position)
    x = tokens()
    clean = model.run(x)
    frozen = model.run(x, Intervention(scale=clean.scale, mean=clean.mean,
                                       pattern=clean.pattern))
    for name in ("logits", "z", "resid", "pattern", "u"):
        torch.testing.assert_close(getattr(frozen, name), getattr(clean, name),
                                   rtol=0, atol=1e-12)


def test_frozen_pattern_and_scale_are_really_held():
    """Changing an early token moves the statistics and patterns of later positions,
    unless they are frozen (the freeze does not silently leak)."""
    model = tiny_lm("layer", "pre")
    x = tokens(1)
    y = x.clone()
    y[0, 0] = (x[0, 0] + 1) % VOCAB
    clean = model.run(x)
    held = model.run(y, Intervention(scale=clean.scale, mean=clean.mean, pattern=clean.pattern))
    live = model.run(y)
    assert (live.pattern - clean.pattern).abs().max() > 1e-6
    torch.testing.assert_close(held.pattern, clean.pattern, rtol=0, atol=0)
    torch.testing.assert_close(held.scale, clean.scale, rtol=0, atol=0)


@pytest.mark.parametrize("norm,position", CASES)
def test_patched_z_equals_the_reference(norm, position):
    model = tiny_lm(norm, position)
    x = tokens(1)
    mask = torch.zeros(1, x.shape[1], 6, dtype=torch.bool)
    mask[0, 2, 4] = True
    values = torch.full((1, x.shape[1], 6), 0.75, dtype=torch.float64)
    run = model.run(x, Intervention(patch={1: (mask, values)}))
    want = reference_forward(model.state_dict(), model.config.to_dict(), x[0].tolist(),
                             patch={(1, 2, 4): 0.75})
    torch.testing.assert_close(run.logits[0], want, rtol=1e-10, atol=1e-10)
    assert run.z[0, 1, 2, 4] == 0.75


def test_z_offset_is_added_and_differentiable():
    model = tiny_lm()
    x = tokens()
    clean = model.run(x)
    offset = torch.zeros_like(clean.z, requires_grad=True)
    out = model.run(x, Intervention(z_offset=offset))
    out.logits[:, -1, 0].sum().backward()
    assert offset.grad.shape == clean.z.shape and offset.grad.abs().sum() > 0
    assert offset.grad[:, :, -1].abs().sum() > 0


@pytest.mark.parametrize("norm,position", CASES)
def test_causality(norm, position):
    """Changing the token at position t changes no logit before t."""
    model = tiny_lm(norm, position)
    x = tokens(1, 8)
    for t in (0, 3, 7):
        y = x.clone()
        y[0, t] = (x[0, t] + 5) % VOCAB
        a, b = model(x), model(y)
        torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-12)
        assert (a[:, t:] - b[:, t:]).abs().max() > 1e-6


def test_batched_equals_one_by_one():
    model = tiny_lm("layer", "post")
    x = tokens(4)
    batched = model.run(x)
    for i in range(len(x)):
        one = model.run(x[i:i + 1])
        for name in ("logits", "z", "scale", "pattern", "attn_out"):
            torch.testing.assert_close(getattr(one, name)[0], getattr(batched, name)[i],
                                       rtol=1e-12, atol=1e-12)


def test_run_shapes_and_norm_order():
    model = tiny_lm("layer", "pre")
    x = tokens(2, 5)
    run = model.run(x)
    assert run.resid.shape == (2, 5, 5, 8) and run.scale.shape == (2, 5, 5)
    assert run.pattern.shape == (2, 2, 2, 5, 5) and run.z.shape == (2, 2, 5, 6)
    # norm 2l+1 is layer l's MLP norm: its input is h after the attention, and u = N(h)
    y, _, _ = model.layers[1].mlp_norm(run.resid[:, :, 3])
    torch.testing.assert_close(run.u[:, 1], y)
    torch.testing.assert_close(run.pattern.sum(-1), torch.ones(2, 2, 2, 5, dtype=torch.float64))
    assert run.pattern.triu(1).abs().max() == 0


def test_float32_by_default_and_float64_on_request():
    cfg = TransformerConfig(vocab_size=VOCAB, n_ctx=CTX, d_model=8, d_hidden=6, n_layers=1,
                            n_heads=2)
    model = BilinearTransformer(cfg)
    assert model(tokens()).dtype == torch.float32
    assert model.double()(tokens()).dtype == torch.float64


def test_bad_tokens_one_clear_error():
    model = tiny_lm()
    with pytest.raises(BilensError, match="token id 11 out of range"):
        model(torch.tensor([[1, 11]]))
    with pytest.raises(BilensError, match="exceeds the model's n_ctx=9"):
        model.run(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(BilensError, match="integer token ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(BilensError, match="add a batch axis"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(BilensError, match="intervention.pattern"):
        model.run(tokens(), Intervention(pattern=torch.zeros(3, 2, 2, 7, 6)))


def test_config_refuses_odd_head_width():
    with pytest.raises(BilensError, match="even d_head"):
        TransformerConfig(vocab_size=5, n_ctx=4, d_model=6, d_hidden=4, n_layers=1, n_heads=2)


@pytest.mark.parametrize("norm,position", [("layer", "pre"), ("rms", "post"), ("none", "pre")])
def test_checkpoint_written_by_another_tool(tmp_path, norm, position):
    """safetensors written directly, with a minimal config.json and no metadata."""
    from safetensors.torch import save_file

    import bilens

    model = tiny_lm(norm, position, seed=3)
    cfg = {k: v for k, v in model.config.to_dict().items()}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = bilens.load(tmp_path)
    assert isinstance(loaded, BilinearTransformer) and loaded.tokenizer is None
    assert loaded.metadata == {} and loaded.dtype == torch.float64
    x = tokens()
    want = torch.stack([reference_forward(dict(loaded.state_dict()), cfg, r.tolist()) for r in x])
    torch.testing.assert_close(loaded(x), want, rtol=1e-10, atol=1e-10)


def test_config_contradicting_tensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    import bilens

    model = tiny_lm()
    save_file(dict(model.state_dict()), str(tmp_path / "model.safetensors"))
    cfg = {**model.config.to_dict(), "d_hidden": 7}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BilensError, match=r"tensor 'layers.0.L' has shape \[6, 8\], expected"):
        bilens.load(tmp_path)


def test_forward_unchecked_is_the_same_forward():
    """`forward(check=False)` (for tokens checked already, or a CUDA graph) skips only the
    check: the same logits, and a bad token is no longer read on the host."""
    model = tiny_lm()
    x = tokens()
    torch.testing.assert_close(model(x, check=False), model(x), rtol=0, atol=0)
    with pytest.raises(BilensError, match="token id 11 out of range"):
        model(torch.tensor([[1, 11]]), check=True)


def test_forward_unchecked_reads_no_token_on_the_host(monkeypatch):
    """`check=False` really skips the check (which would read the tokens on the host)."""
    import bilens.core.models.transformer as transformer

    def no_check(*args, **kwargs):
        raise AssertionError("the tokens were checked")
    monkeypatch.setattr(transformer, "check_tokens", no_check)
    model = tiny_lm()
    assert model(tokens(), check=False).shape[-1] == model.config.vocab_size
    with pytest.raises(AssertionError, match="were checked"):
        model(tokens())

"""The model of SPEC §1 against the slow float64 reference, and its frozen/patched runs."""

from __future__ import annotations

import pytest
import torch
from conftest import CASES, tiny_model
from reference import forward_one
from torch.testing import assert_close

from bilens.core.errors import BilensError
from bilens.core.models.intervention import Intervention

SEEDS = (0, 1, 2)


def _inputs(model, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + seed)
    return 1.5 * torch.randn(n, model.config.d_in, generator=g, dtype=model.dtype)


def _ref(model, x, **kw):
    cfg = model.config.to_dict()
    return [forward_one(model.state_dict(), cfg, xi, **kw) for xi in x]


# `run` stores its [B, L, H] results through `out=` under no_grad and stacks them otherwise
GRAD = pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])


@GRAD
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("norm,position", CASES)
def test_forward_equals_reference(norm, position, seed, grad):
    model = tiny_model(norm, position, seed)
    x = _inputs(model, seed=seed)
    with torch.set_grad_enabled(grad):
        run = model.run(x)
    ref = _ref(model, x)
    assert_close(run.logits, torch.stack([r[0] for r in ref]), rtol=1e-10, atol=1e-10)
    assert_close(run.z, torch.stack([torch.stack(r[1]) for r in ref]), rtol=1e-10, atol=1e-10)
    if norm != "none":
        s_ref = torch.tensor([r[2] for r in ref], dtype=torch.float64)
        assert_close(run.scale, s_ref, rtol=1e-10, atol=1e-10)
    assert_close(model(x), run.logits)


@GRAD
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("norm,position", CASES)
def test_ablation_equals_reference(norm, position, seed, grad):
    """`patch` setting one channel to a value is the reference's `z_{l,k} := b`, both with
    live statistics and with statistics frozen at the clean run's; so is a `z_offset` of
    `b - z` on that channel."""
    model = tiny_model(norm, position, seed)
    x = _inputs(model, n=2, seed=seed)
    clean = model.run(x)
    layer, channel, value = seed % model.config.n_layers, (3 * seed + 1) % 7, 0.7 - seed
    mask = torch.zeros(model.config.d_hidden, dtype=torch.bool)
    mask[channel] = True
    patch = {layer: (mask, torch.full((model.config.d_hidden,), value, dtype=x.dtype))}
    offset = torch.zeros_like(clean.z)
    offset[:, layer, channel] = value - clean.z[:, layer, channel]
    with torch.set_grad_enabled(grad):
        live = model.run(x, Intervention(patch=patch))
        frozen = model.run(x, Intervention(patch=patch, scale=clean.scale))
        shifted = model.run(x, Intervention(z_offset=offset))
    assert_close(shifted.logits, live.logits, rtol=1e-10, atol=1e-10)
    assert_close(shifted.z[:, layer, channel], torch.full((len(x),), value, dtype=x.dtype))
    for i in range(len(x)):
        stats = clean.scale[i].tolist()
        ref_live = forward_one(model.state_dict(), model.config.to_dict(), x[i],
                               ablate=(layer, channel, value))[0]
        ref_frozen = forward_one(model.state_dict(), model.config.to_dict(), x[i],
                                 ablate=(layer, channel, value), frozen=stats)[0]
        assert_close(live.logits[i], ref_live, rtol=1e-10, atol=1e-10)
        assert_close(frozen.logits[i], ref_frozen, rtol=1e-10, atol=1e-10)
    if norm != "none":  # the ablation must actually change something for the test to bite
        assert not torch.allclose(live.logits, clean.logits)


@pytest.mark.parametrize("norm,position", CASES)
def test_frozen_clean_statistics_change_nothing(norm, position):
    model = tiny_model(norm, position, seed=3)
    x = _inputs(model, n=5)
    clean = model.run(x)
    frozen = model.run(x, Intervention(scale=clean.scale))
    frozen_both = model.run(x, Intervention(scale=clean.scale, mean=clean.mean))
    assert_close(frozen.logits, clean.logits, rtol=1e-12, atol=1e-12)
    assert_close(frozen_both.logits, clean.logits, rtol=1e-12, atol=1e-12)
    assert_close(frozen.scale, clean.scale, rtol=0, atol=0)


@pytest.mark.parametrize("norm,position", CASES)
def test_patching_a_channel_with_its_own_value_changes_nothing(norm, position):
    model = tiny_model(norm, position, seed=4)
    x = _inputs(model, n=5)
    clean = model.run(x)
    mask = torch.zeros(len(x), model.config.d_hidden, dtype=torch.bool)
    mask[:, ::2] = True
    patch = {i: (mask, clean.z[:, i]) for i in range(model.config.n_layers)}
    patched = model.run(x, Intervention(patch=patch))
    assert_close(patched.logits, clean.logits, rtol=0, atol=0)
    assert_close(patched.z, clean.z, rtol=0, atol=0)


@pytest.mark.parametrize("norm,position", CASES)
def test_batched_equals_one_by_one(norm, position):
    model = tiny_model(norm, position, seed=5)
    x = _inputs(model, n=6)
    batched = model(x)
    single = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    assert_close(batched, single, rtol=1e-12, atol=1e-12)


def test_float32_by_default_and_float64_on_request():
    from bilens.core.config import ModelConfig
    from bilens.core.models.mlp import BilinearNet

    model = BilinearNet(ModelConfig(d_in=5, d_model=6, d_hidden=7, n_layers=2, n_out=3))
    assert model(torch.randn(2, 5)).dtype == torch.float32
    assert model.double()(torch.randn(2, 5, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("bad,fragment", [
    (torch.randn(3, 4, dtype=torch.float64), "expected shape [batch, 5]"),
    (torch.randn(5, dtype=torch.float64), "add a batch axis"),
    (torch.full((2, 5), float("nan"), dtype=torch.float64), "NaN"),
    (torch.empty(0, 5, dtype=torch.float64), "empty"),
    (torch.ones(2, 5, dtype=torch.long), "floating-point"),
])
def test_bad_inputs_are_refused_clearly(bad, fragment):
    model = tiny_model()
    with pytest.raises(BilensError, match=None) as err:
        model(bad)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)

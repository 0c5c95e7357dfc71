# ruff: noqa: E741
"""Norm drift: the closed-form measured ds/s equals the real network's, and the seed's
first-order formula holds where its assumptions do (small delta) and not elsewhere."""

import math

import pytest
import torch
from reference_mlp import drift_reference, literal_params

from bilens.analysis.drift import drift_summary, effect_ratio, norm_drift
from bilens.analysis.metrics import normalized_error, pearson
from bilens.core.config import ModelConfig
from bilens.core.models.intervention import Intervention
from bilens.core.models.mlp import BilinearNet

nan = math.nan


def tiny(norm="rms", position="post", seed=0, d_scale=1.0, eps=1e-5):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_in=6, d_model=12, d_hidden=10, n_layers=3, n_out=4, norm=norm,
                      norm_position=position, eps=eps)
    model = BilinearNet(cfg).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.D.mul_(d_scale)
            if norm != "none":
                layer.norm.weight.uniform_(0.5, 1.5)
    return model, torch.randn(5, 6, dtype=torch.float64)


@pytest.mark.parametrize("norm", ["rms", "layer"])
@pytest.mark.parametrize("position", ["post", "pre"])
@pytest.mark.parametrize("baseline", ["zero", "tensor"])
def test_measured_drift_equals_the_real_network(norm, position, baseline):
    model, x = tiny(norm, position)
    clean = model.run(x)
    b = torch.randn_like(clean.z[0]) if baseline == "tensor" else torch.zeros_like(clean.z[0])
    drift = norm_drift(model, x, baselines=b)
    shift = 0 if position == "post" else 1
    for l, k in [(0, 0), (1, 7), (2, 3)]:
        one = torch.zeros(model.config.d_hidden, dtype=torch.bool)
        one[k] = True
        run = model.run(x, Intervention(patch={l: (one, b[l].expand_as(clean.z[:, l]))}))
        real = run.scale[:, l + shift] / clean.scale[:, l + shift] - 1
        torch.testing.assert_close(drift.measured[:, l, k], real, rtol=1e-9, atol=1e-13)


def test_formula_holds_for_small_delta():
    # tiny writes (|delta| << |r|) and eps = 0: ds/s is first order, (r.delta)/|r|^2
    model, x = tiny("rms", "post", d_scale=1e-4, eps=0.0)
    d = norm_drift(model, x)
    assert d.delta_over_r.max() < 1e-3
    assert pearson(d.formula, d.measured) > 0.9999
    assert normalized_error(d.formula, d.measured) < 1e-2


def test_formula_fails_for_large_delta():
    # the negative control: big writes make |delta|^2 matter, and the formula drifts off
    model, x = tiny("rms", "post", d_scale=30.0, eps=0.0)
    d = norm_drift(model, x)
    assert normalized_error(d.formula, d.measured) > 0.1


def test_no_norm_means_no_drift():
    model, x = tiny("none")
    d = norm_drift(model, x)
    assert d.measured.abs().max() == 0 and d.formula.abs().max() == 0


def test_effect_ratio_by_hand():
    a = torch.tensor([2.0, 0.0, nan, -4.0])
    af = torch.tensor([1.5, 1.0, 1.0, -3.0])
    r = effect_ratio(a, af)
    assert r[0].item() == pytest.approx(0.25)
    assert math.isnan(r[1]) and math.isnan(r[2])
    assert r[3].item() == pytest.approx(0.25)


def test_drift_summary_uses_ablated_channels_only():
    model, x = tiny()
    d = norm_drift(model, x)
    actual = torch.randn_like(d.measured)
    actual[:, 1] = nan                                           # layer 1 not ablated
    s = drift_summary(d, actual, actual * 0.9, model.config.d_model)
    assert s["overall"]["effect_ne"] == pytest.approx(0.1)
    assert s["overall"]["effect_ratio"]["median"] == pytest.approx(0.1)
    assert math.isnan(s["per_layer"][1]["formula_pearson"])
    keep = torch.isfinite(actual)
    assert s["overall"]["abs_ds_over_s"]["mean"] == pytest.approx(
        d.measured[keep].abs().mean().item())


def test_inputs_are_moved_to_the_models_dtype(make_model):
    """float32 inputs to a float64 model, as `attribute` and `ablation_effects` accept them
    (the device is handled the same way)."""
    from bilens.core.baselines import from_inputs

    model = make_model("rms", "pre")
    x, other = torch.randn(3, 5), torch.randn(3, 5)
    b = from_inputs(model, other)
    assert b.dtype == torch.float64
    torch.testing.assert_close(b, model.run(other.double()).z)
    drift = norm_drift(model, x, baselines=b)
    sd, cfg = literal_params(model)                 # the SPEC reference, on float64 inputs
    expected = [drift_reference(sd, cfg, x[i].double(), b[i]) for i in range(3)]
    torch.testing.assert_close(drift.measured, torch.stack([e.measured for e in expected]),
                               rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(drift.formula, torch.stack([e.formula for e in expected]),
                               rtol=1e-10, atol=1e-12)

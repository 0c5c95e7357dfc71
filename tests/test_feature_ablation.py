"""Feature ablation of the transformer (docs/spec.md §9): channel `(l, k)` set to its
baseline at every position at once, propagated from the clean run, against a plain patched
rerun in float64 for every norm x position, held statistics, both target kinds; batched
equals one-by-one; the first-order relation to the node attributions; `verify` reports it."""

# ruff: noqa: E741
from __future__ import annotations

import pytest
import torch

from bilens.ablation.reference_sequence import joint_sequence_ablation_effect
from bilens.ablation.sequence import feature_ablation_effects
from bilens.analysis.verify_sequence import verify_sequence
from bilens.attribution.sequence import attribute_sequence
from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.sequence import prepare_sequence

CASES = [(n, p) for n in ("none", "rms", "layer") for p in ("pre", "post")]


def tiny(norm: str, position: str, seed: int = 0) -> BilinearTransformer:
    torch.manual_seed(seed)
    model = BilinearTransformer(TransformerConfig(
        vocab_size=20, n_ctx=8, d_model=8, d_hidden=6, n_layers=3, n_heads=2, norm=norm,
        norm_position=position, attn_scale=0.7)).double()
    with torch.no_grad():                           # gains and biases away from 1 and 0
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
    return model


def reference(model, tokens, target, position, labels, frozen_norm, frozen_attn):
    """Each feature by a rerun with `z_l[:, k] := b` at every position, from docs/spec.md §9."""
    tk, run, tgt, b = prepare_sequence(model, tokens, target, position, "zero", labels, None)
    B, L, T, H = run.z.shape
    out = torch.zeros(B, L, H, dtype=run.z.dtype)
    for l in range(L):
        for k in range(H):
            mask = torch.zeros_like(run.z, dtype=torch.bool)
            mask[:, l, :, k] = True
            out[:, l, k] = joint_sequence_ablation_effect(
                model, tk, run, tgt, b, mask, frozen_norm=frozen_norm, frozen_attn=frozen_attn)
    return out


@pytest.mark.parametrize("norm, position", CASES)
@pytest.mark.parametrize("held", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("target", ["predicted", "mean-logprob"])
def test_features_equal_a_patched_rerun(norm, position, held, target):
    model = tiny(norm, position)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(20, (3, 7), generator=gen)
    labels = torch.randint(20, (3, 7), generator=gen) if target == "mean-logprob" else None
    where = None if target == "mean-logprob" else torch.tensor([6, 3, 4])
    got = feature_ablation_effects(model, tokens, target=target, position=where,
                                   labels=labels, frozen_norm=held[0], frozen_attn=held[1])
    want = reference(model, tokens, target, where, labels, *held)
    assert ((got - want).norm() / want.norm()).item() < 1e-10


def test_batched_equals_one_by_one():
    model = tiny("layer", "post")
    tokens = torch.randint(20, (4, 7), generator=torch.Generator().manual_seed(2))
    whole = feature_ablation_effects(model, tokens, target="predicted")
    tiny_budget = feature_ablation_effects(model, tokens, target="predicted", memory=1)
    alone = torch.cat([feature_ablation_effects(model, tokens[i:i + 1], target="predicted")
                       for i in range(4)])
    torch.testing.assert_close(tiny_budget, whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(alone, whole, rtol=1e-12, atol=1e-14)


def test_first_order_is_the_sum_of_node_attributions():
    """With the baseline `z + eps u`, the feature effect minus the live prediction summed
    over positions shrinks as eps^2 (halving eps quarters it)."""
    model = tiny("rms", "pre")
    tokens = torch.randint(20, (2, 6), generator=torch.Generator().manual_seed(3))
    run = model.run(tokens)
    u = torch.randn(run.z.shape, generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64)
    gaps = []
    for eps in (1e-2, 5e-3):
        b = (run.z + eps * u).detach()
        actual = feature_ablation_effects(model, tokens, target="class:3", baselines=b)
        pred = attribute_sequence(model, tokens, target="class:3", baselines=b,
                                  mode="live").sum(2)
        gaps.append((actual - pred).abs().max().item())
        assert (actual - pred).abs().max() < 0.05 * actual.abs().max()
    assert 3.0 < gaps[0] / gaps[1] < 5.0


def test_verify_reports_features():
    model = tiny("rms", "post")
    tokens = torch.randint(20, (2, 7), generator=torch.Generator().manual_seed(5))
    r = verify_sequence(model, tokens, target="predicted", progress=False, circuit_ks=())
    want = reference(model, tokens, "predicted", None, None, False, False)
    torch.testing.assert_close(r.tensors["feature.actual"], want, rtol=1e-9, atol=1e-12)
    for mode in ("frozen", "live"):
        torch.testing.assert_close(r.tensors[f"feature.predicted.{mode}"],
                                   r.tensors[f"predicted.{mode}"].sum(2))
        assert set(r.metrics["features"][mode]) >= {"overall", "per_layer"}
    assert r.metrics["features"]["live"]["overall"]["normalized_error"] < \
        r.metrics["features"]["frozen"]["overall"]["normalized_error"]
    off = verify_sequence(model, tokens, target="predicted", progress=False, circuit_ks=(),
                          features=False)
    assert "features" not in off.metrics and "feature.actual" not in off.tensors

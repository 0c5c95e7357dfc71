"""bilens against float64 slow references written from SPEC (`tests/reference_mlp.py`), for
every norm x position and two seeds, zennit-style: one input and one channel at a time, the
definitions followed literally, no expected value taken from bilens's own output.

- `g = d f / d z` under `frozen` and `live`, every layer: `gradients` and `attribute`;
- the drift of SPEC §5 (measured `ds/s`, the seed's formula, `|delta|/|r|`) and the drift
  summary's seed estimate `median |delta|/|r| / sqrt(d)`, with zero and non-zero baselines;
- joint ablation, in the real network and with frozen norms;
- `verify`'s drift tensors and summary with a tensor and a `"mean"` baseline.
"""

# ruff: noqa: E741  (`l` is SPEC's layer index)
from __future__ import annotations

import inspect
import math

import pytest
import torch
from conftest import CASES, tiny_model
from reference_mlp import (
    drift_reference,
    effects_reference,
    forward,
    grad_finite_difference,
    grad_reference,
    literal_params,
    summary_reference,
    target_value,
)

from bilens.ablation import joint_ablation_effect
from bilens.analysis.drift import drift_summary, norm_drift
from bilens.analysis.verify import verify
from bilens.attribution.backward import gradients
from bilens.attribution.predict import attribute
from bilens.core.targets import resolve_target

SEEDS = [0, 1]
TIGHT = dict(rtol=1e-10, atol=1e-12)      # float64, different summation orders


def baseline_kw(fn, value) -> dict:
    """`{"baseline": value}`, or `{"baselines": value}` once the API uses captum's name."""
    name = "baselines" if "baselines" in inspect.signature(fn).parameters else "baseline"
    return {name: value}


def model_and_inputs(norm: str, position: str, seed: int, n: int = 3):
    """A tiny float64 network (gains != 1, LayerNorm bias != 0) whose writes `D z` are large
    enough that norm drift and gating interference are far from negligible."""
    model = tiny_model(norm, position, seed=seed, d_hidden=4)
    with torch.no_grad():
        for layer in model.layers:
            layer.D.mul_(8.0)
    x = torch.randn(n, model.config.d_in, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(100 + seed))
    return model, x


def random_baseline(model, seed: int, per_input: int | None = None) -> torch.Tensor:
    cfg = model.config
    shape = (cfg.n_layers, cfg.d_hidden) if per_input is None else (
        per_input, cfg.n_layers, cfg.d_hidden)
    return torch.randn(*shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(200 + seed))


# ---- d f / d z under each linearization, every layer --------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("norm,position", CASES)
@pytest.mark.parametrize("mode", ["frozen", "live"])
def test_gradient_equals_the_literal_derivative(norm, position, seed, mode):
    """`gradients` is `d f / d z` of SPEC §1's network in every layer: the true derivative
    (`live`), or that of the network whose norms hold their clean `s` with LayerNorm's
    centering kept (`frozen`). The reference differentiates a literal reimplementation, and
    is itself checked by central differences."""
    model, x = model_and_inputs(norm, position, seed)
    sd, cfg = literal_params(model)
    direction = torch.randn(x.shape[0], cfg["n_out"], dtype=torch.float64,
                            generator=torch.Generator().manual_seed(seed))
    labels = torch.tensor([1, 3, 0])
    run = model.run(x)
    for spec in ("direction", "logprob"):
        if spec == "direction":
            target = resolve_target(direction, run.logits)
            kw = [dict(direction=direction[i]) for i in range(x.shape[0])]
        else:
            target = resolve_target("logprob", run.logits, labels)
            kw = [dict(label=int(labels[i])) for i in range(x.shape[0])]
        got = gradients(model, run, target=target, mode=mode)
        for i in range(x.shape[0]):
            ref = grad_reference(sd, cfg, x[i], mode, **kw[i])
            torch.testing.assert_close(got[i], ref, **TIGHT, msg=f"{spec}, input {i}")
            fd = grad_finite_difference(sd, cfg, x[i], mode, **kw[i])
            torch.testing.assert_close(fd, ref, rtol=1e-6, atol=1e-7, msg="reference vs FD")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("norm,position", CASES)
def test_attribute_is_baseline_minus_z_times_the_literal_gradient(norm, position, seed):
    """SPEC §4 `predicted = (b - z) g` through the public API, zero and tensor baselines."""
    model, x = model_and_inputs(norm, position, seed)
    sd, cfg = literal_params(model)
    b = random_baseline(model, seed)
    for mode in ("frozen", "live"):
        zero = attribute(model, x, target="class:2", mode=mode)
        shifted = attribute(model, x, target="class:2", mode=mode, **baseline_kw(attribute, b))
        for i in range(x.shape[0]):
            onehot = torch.nn.functional.one_hot(torch.tensor(2), cfg["n_out"]).double()
            g = grad_reference(sd, cfg, x[i], mode, direction=onehot)
            z = torch.stack(forward(sd, cfg, x[i]).z)
            torch.testing.assert_close(zero[i], -z * g, **TIGHT)
            torch.testing.assert_close(shifted[i], (b - z) * g, **TIGHT)


# ---- norm drift and the seed's estimate ---------------------------------------------------

def _literal_drift(sd, cfg, x, b):
    refs = [drift_reference(sd, cfg, x[i], b[i]) for i in range(x.shape[0])]
    return {name: torch.stack([getattr(r, name) for r in refs])
            for name in ("measured", "formula", "delta_over_r")}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("norm,position", CASES)
@pytest.mark.parametrize("baseline", ["zero", "shared", "per-input"])
def test_drift_equals_the_literal_rerun_and_formula(norm, position, seed, baseline):
    """`norm_drift`: measured `ds/s` is the real rerun's `s'/s - 1` at the first norm after
    the ablated layer; `formula` is `(r . delta)/|r|^2`; `delta_over_r` is `|delta|/|r|`."""
    model, x = model_and_inputs(norm, position, seed)
    sd, cfg = literal_params(model)
    n, L, H = x.shape[0], cfg["n_layers"], cfg["d_hidden"]
    b = {"zero": torch.zeros(L, H, dtype=torch.float64),
         "shared": random_baseline(model, seed),
         "per-input": random_baseline(model, seed, per_input=n)}[baseline]
    b_full = b.expand(n, L, H)
    got = norm_drift(model, x, **baseline_kw(norm_drift, b))
    ref = _literal_drift(sd, cfg, x, b_full)
    torch.testing.assert_close(got.measured, ref["measured"], rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(got.formula, ref["formula"], **TIGHT)
    torch.testing.assert_close(got.delta_over_r, ref["delta_over_r"], **TIGHT)
    if norm != "none":
        assert ref["measured"].abs().max() > 1e-3          # the drift is really exercised


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("norm,position", CASES)
def test_drift_summary_and_seed_estimate_equal_the_literal_ones(norm, position, seed):
    """`drift_summary` over literal inputs: the seed's estimate is the median `|delta|/|r|`
    divided by `sqrt(d)` (overall and per layer), the quantiles are of `|ds/s|`, the
    formula's NE and the effect NE are `sum|.-.|/sum|.|`. A layer left out (NaN `actual`)
    must not enter any of them."""
    model, x = model_and_inputs(norm, position, seed)
    sd, cfg = literal_params(model)
    n, L, H, d = x.shape[0], cfg["n_layers"], cfg["d_hidden"], cfg["d_model"]
    b = random_baseline(model, seed)
    onehot = torch.nn.functional.one_hot(torch.tensor(1), cfg["n_out"]).double()
    ref = _literal_drift(sd, cfg, x, b.expand(n, L, H))
    actual = torch.stack([effects_reference(sd, cfg, x[i], b, direction=onehot)
                          for i in range(n)])
    frozen = torch.stack([effects_reference(sd, cfg, x[i], b, direction=onehot,
                                            frozen_norm=True) for i in range(n)])
    actual[:, 1] = math.nan                                       # layer 1 not ablated
    drift = norm_drift(model, x, **baseline_kw(norm_drift, b))
    summary = drift_summary(drift, actual, frozen, d)

    def literal(layers):
        keep = [(i, l, k) for i in range(n) for l in layers for k in range(H)]
        pick = {name: [float(t[i, l, k]) for i, l, k in keep] for name, t in
                {**ref, "actual": actual, "frozen": frozen}.items()}
        return summary_reference(pick["measured"], pick["formula"], pick["delta_over_r"],
                                 pick["actual"], pick["frozen"], d)

    for got, want in [(summary["overall"], literal([0, 2])),
                      *[(summary["per_layer"][l], literal([l])) for l in (0, 2)]]:
        assert got["seed_estimate"] == pytest.approx(want["seed_estimate"], rel=1e-12)
        assert got["delta_over_r"]["median"] == pytest.approx(want["delta_over_r_median"],
                                                              rel=1e-12)
        assert got["abs_ds_over_s"]["mean"] == pytest.approx(want["abs_ds_over_s_mean"],
                                                             rel=1e-9, abs=1e-15)
        assert got["abs_ds_over_s"]["median"] == pytest.approx(want["abs_ds_over_s_median"],
                                                               rel=1e-9, abs=1e-15)
        assert got["effect_ne"] == pytest.approx(want["effect_ne"], rel=1e-9)
        if norm != "none":
            assert got["formula_ne"] == pytest.approx(want["formula_ne"], rel=1e-9)
    assert math.isnan(summary["per_layer"][1]["seed_estimate"])
    if norm != "none":                     # the estimate is not the median ratio itself
        assert summary["overall"]["seed_estimate"] < summary["overall"]["delta_over_r"]["median"]


# ---- joint ablation -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("norm,position", CASES)
@pytest.mark.parametrize("frozen_norm", [False, True])
def test_joint_ablation_equals_a_literal_rerun(norm, position, seed, frozen_norm):
    """`joint_ablation_effect`: several channels per input (across layers) set to `b`
    together, in the real network or (`frozen_norm=True`) with every norm holding its clean
    `s` (LayerNorm centering live), against a literal rerun of SPEC §1."""
    model, x = model_and_inputs(norm, position, seed)
    sd, cfg = literal_params(model)
    n, L, H = x.shape[0], cfg["n_layers"], cfg["d_hidden"]
    b = random_baseline(model, seed, per_input=n)
    mask = torch.rand(n, L, H, generator=torch.Generator().manual_seed(300 + seed)) < 0.4
    mask[:, 0, 0] = mask[:, L - 1, H - 1] = True                   # at least two layers each
    direction = torch.randn(n, cfg["n_out"], dtype=torch.float64,
                            generator=torch.Generator().manual_seed(seed))
    got = joint_ablation_effect(model, x, target=direction, mask=mask,
                                frozen_norm=frozen_norm, **baseline_kw(joint_ablation_effect, b))
    gap = 0.0
    for i in range(n):
        with torch.no_grad():
            clean = forward(sd, cfg, x[i])
            patch = {(l, k): float(b[i, l, k]) for l, k in mask[i].nonzero().tolist()}
            f0 = target_value(clean.logits, direction[i])
            want = {held: target_value(forward(sd, cfg, x[i], patch=patch, frozen=[
                        float(s) for s in clean.s] if held else None).logits, direction[i]) - f0
                    for held in (False, True)}
        torch.testing.assert_close(got[i], want[frozen_norm], rtol=1e-10, atol=1e-12)
        gap = max(gap, abs(float(want[True] - want[False])))
    assert gap > 1e-6 or norm == "none"     # frozen and real differ: the test tells them apart


# ---- verify's drift with a non-zero baseline ----------------------------------------------

@pytest.mark.parametrize("norm,position", CASES)
@pytest.mark.parametrize("baseline", ["tensor", "mean"])
def test_verify_drift_uses_the_baseline(norm, position, baseline):
    """`verify(..., baseline=b)` reports the drift of setting each channel to `b` (a tensor,
    or the mean activation over `reference`), not to zero: its `drift.measured`,
    `drift.formula`, ground truth and seed estimate against the literal references."""
    model, x = model_and_inputs(norm, position, seed=0)
    sd, cfg = literal_params(model)
    n, L, H, d = x.shape[0], cfg["n_layers"], cfg["d_hidden"], cfg["d_model"]
    kw: dict = {}
    if baseline == "tensor":
        b = random_baseline(model, seed=5)
        kw.update(baseline_kw(verify, b))
    else:
        reference = torch.randn(6, cfg["d_in"], dtype=torch.float64,
                                generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            zs = [torch.stack(forward(sd, cfg, reference[j]).z) for j in range(6)]
        b = sum(zs) / len(zs)
        kw.update(baseline_kw(verify, "mean"), reference=reference)
    result = verify(model, x, modes=("frozen",), circuit_ks=(), progress=False, **kw)
    ref = _literal_drift(sd, cfg, x, b.expand(n, L, H))
    t = result.tensors
    torch.testing.assert_close(t["drift.measured"], ref["measured"], rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(t["drift.formula"], ref["formula"], **TIGHT)
    with torch.no_grad():
        cls = [int(forward(sd, cfg, x[i]).logits.argmax()) for i in range(n)]
    onehots = [torch.nn.functional.one_hot(torch.tensor(c), cfg["n_out"]).double() for c in cls]
    actual = torch.stack([effects_reference(sd, cfg, x[i], b, direction=onehots[i])
                          for i in range(n)])
    frozen = torch.stack([effects_reference(sd, cfg, x[i], b, direction=onehots[i],
                                            frozen_norm=True) for i in range(n)])
    torch.testing.assert_close(t["actual"], actual, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(t["actual_frozen_norm"], frozen, rtol=1e-9, atol=1e-12)
    seed_estimate = result.metrics["drift"]["overall"]["seed_estimate"]
    ratios = ref["delta_over_r"].flatten().tolist()
    want = summary_reference(ratios, ratios, ratios, [1.0], [1.0], d)["seed_estimate"]
    assert seed_estimate == pytest.approx(want, rel=1e-12)

"""The ground truth (SPEC §3): the fast exhaustive ablation against slow references.

- `tests/reference.py` (float64, one sample and one channel at a time, read from the
  state dict only) for every norm x position;
- the plain loop `ablation_effects_loop` (a forward pass per channel) for targets,
  baselines, subsets and the frozen-norm network;
- an independent autograd linearization for the frozen-norm effect at the last layer.
"""

# ruff: noqa: E741
from __future__ import annotations

import copy
import itertools

import pytest
import torch
from reference import forward_one

from bilens.ablation import (
    ablation_effects,
    ablation_effects_loop,
    channel_mask,
    joint_ablation_effect,
)
from bilens.ablation._engine.plan import Plan
from bilens.ablation.reference import prepare
from bilens.core.config import ModelConfig
from bilens.core.errors import BilensError
from bilens.core.memory import parse_memory
from bilens.core.models.intervention import Intervention
from bilens.core.models.mlp import BilinearNet

NORMS = ["none", "rms", "layer"]
POSITIONS = ["post", "pre"]


def make(norm="rms", pos="post", seed=0, d_in=6, d_model=8, d_hidden=5, n_layers=3, n_out=4,
         dtype=torch.float64, spread=0.3):
    """A random model whose gains/biases are not trivial, and inputs."""
    torch.manual_seed(seed)
    cfg = ModelConfig(d_in=d_in, d_model=d_model, d_hidden=d_hidden, n_layers=n_layers,
                      n_out=n_out, norm=norm, norm_position=pos)
    model = BilinearNet(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(spread * torch.randn_like(p))
    return model


def close(a, b, tol=1e-10):
    """Normwise relative agreement, NaN in the same places."""
    assert torch.equal(a.isnan(), b.isnan())
    a, b = a.nan_to_num(), b.nan_to_num()
    err = (a - b).abs().max() / b.abs().max().clamp_min(1e-300)
    assert err <= tol, f"normwise relative error {err:.3g} > {tol:g}"


@pytest.mark.parametrize("norm,pos", list(itertools.product(NORMS, POSITIONS)))
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_equals_spec_reference(norm, pos, seed):
    model = make(norm, pos, seed, d_in=5, d_model=6, d_hidden=4, n_layers=3, n_out=3)
    x = torch.randn(2, 5, dtype=torch.float64)
    labels = torch.tensor([0, 2])
    sd, cfg = model.state_dict(), model.config.to_dict()
    fast = ablation_effects(model, x, target="class:1")
    fast_lp = ablation_effects(model, x, target="logprob", labels=labels)
    fast_fr = ablation_effects(model, x, target="class:1", frozen_norm=True)
    for i in range(2):
        logits0, _, stats = forward_one(sd, cfg, x[i])
        lp0 = logits0.log_softmax(-1)[labels[i]]
        for l, k in itertools.product(range(3), range(4)):
            logits, _, _ = forward_one(sd, cfg, x[i], ablate=(l, k, 0.0))
            frozen, _, _ = forward_one(sd, cfg, x[i], ablate=(l, k, 0.0), frozen=stats)
            assert fast[i, l, k].item() == pytest.approx((logits - logits0)[1].item(), abs=1e-11)
            assert fast_fr[i, l, k].item() == pytest.approx((frozen - logits0)[1].item(),
                                                            abs=1e-11)
            lp = logits.log_softmax(-1)[labels[i]] - lp0
            assert fast_lp[i, l, k].item() == pytest.approx(lp.item(), abs=1e-11)


@pytest.mark.parametrize("norm,pos", list(itertools.product(NORMS, POSITIONS)))
@pytest.mark.parametrize("target", ["predicted", "logprob", "diff:1,3", "direction"])
@pytest.mark.parametrize("frozen", [False, True])
def test_fast_equals_loop(norm, pos, target, frozen):
    model = make(norm, pos, seed=hash((norm, pos, target)) % 1000, n_layers=4)
    x = torch.randn(5, 6, dtype=torch.float64)
    labels = torch.randint(0, 4, (5,))
    if target == "direction":
        target = torch.randn(5, 4, dtype=torch.float64)
    kw = dict(labels=labels, frozen_norm=frozen)
    close(ablation_effects(model, x, target=target, **kw),
          ablation_effects_loop(model, x, target=target, **kw))


@pytest.mark.parametrize("baseline", ["mean", "tensor_lh", "tensor_blh"])
@pytest.mark.parametrize("pos", POSITIONS)
def test_baselines(baseline, pos):
    model = make("layer", pos, seed=3)
    x = torch.randn(4, 6, dtype=torch.float64)
    kw = {}
    if baseline == "mean":
        kw["reference"] = torch.randn(9, 6, dtype=torch.float64)
    elif baseline == "tensor_lh":
        baseline = torch.randn(3, 5, dtype=torch.float64)
    else:
        baseline = torch.randn(4, 3, 5, dtype=torch.float64)
    close(ablation_effects(model, x, target="predicted", baselines=baseline, **kw),
          ablation_effects_loop(model, x, target="predicted", baselines=baseline, **kw))


def test_subsets_and_nan():
    model = make("rms", "pre", seed=4, n_layers=3)
    x = torch.randn(3, 6, dtype=torch.float64)
    full = ablation_effects(model, x)
    sub = ablation_effects(model, x, layers=[0, -1], channels=[1, 3])
    assert sub[:, 1].isnan().all() and sub[:, :, [0, 2, 4]].isnan().all()
    close(sub[:, [0, 2]][:, :, [1, 3]], full[:, [0, 2]][:, :, [1, 3]])
    per = ablation_effects(model, x, channels={1: [4, 0]})
    assert per[:, [0, 2]].isnan().all() and not per[:, 1, [0, 4]].isnan().any()
    close(per[:, 1, [0, 4]], full[:, 1, [0, 4]])
    mask = torch.rand(3, 5) < 0.5
    masked = ablation_effects(model, x, channels=mask)
    assert torch.equal(~masked[0].isnan(), mask)
    close(masked.nan_to_num(), torch.where(mask, full, 0.0))


def test_frozen_last_layer_is_the_linear_prediction():
    """After the last bilinear layer only frozen norms and the head remain: linear in z."""
    for norm, pos in itertools.product(NORMS, POSITIONS):
        model = make(norm, pos, seed=5)
        x = torch.randn(4, 6, dtype=torch.float64)
        clean = model.run(x)
        direction = torch.nn.functional.one_hot(clean.logits.argmax(-1), 4).double()
        offset = torch.zeros_like(clean.z, requires_grad=True)
        run = model.run(x, Intervention(scale=clean.scale, z_offset=offset))   # frozen network
        (g,) = torch.autograd.grad((run.logits * direction).sum(), offset)
        predicted = (0.0 - clean.z[:, -1]) * g[:, -1]
        actual = ablation_effects(model, x, target="predicted", frozen_norm=True, layers=[-1])
        close(actual[:, -1], predicted.detach(), tol=1e-12)


@pytest.mark.parametrize("memory", [1, 3000, "1GiB"])
def test_chunking_does_not_change_results(memory):
    model = make("layer", "post", seed=6, n_layers=3)
    x = torch.randn(7, 6, dtype=torch.float64)
    ref = ablation_effects(model, x, target="logprob", labels=torch.arange(7) % 4, memory="4GiB")
    got = ablation_effects(model, x, target="logprob", labels=torch.arange(7) % 4, memory=memory)
    close(got, ref, tol=1e-13)


@pytest.mark.parametrize("norm,pos", [("rms", "post"), ("layer", "pre"), ("none", "post")])
def test_float32_agrees_with_float64(norm, pos):
    model = make(norm, pos, seed=7, d_in=32, d_model=64, d_hidden=96, n_layers=4, n_out=10,
                 spread=0.0, dtype=torch.float32)
    x = torch.randn(16, 32)
    f32 = ablation_effects(model, x, target="predicted")
    # the float64 truth from the plain loop (a forward pass per channel), not the fast path
    f64 = ablation_effects_loop(copy.deepcopy(model).double(), x.double(), target="predicted")
    close(f32.double(), f64, tol=1e-5)
    # the loop subtracts two float32 logits: its error is relative to the logit, not the effect
    assert f32.dtype == torch.float32


def test_3xtf32_split_is_float32_accurate():
    """The 3xTF32 split (run here as float32 products of TF32-exact parts) keeps 1e-5."""
    model = make("rms", "post", seed=8, d_in=32, d_model=64, d_hidden=64, n_layers=4,
                 n_out=10, spread=0.0, dtype=torch.float32)
    x = torch.randn(8, 32)
    _, clean, tgt, b = prepare(model, x, "predicted", "zero", None, None)
    plan = Plan(model, precision="3xtf32")
    got = torch.stack([plan.effects(clean, tgt, b[:, l] - clean.z[:, l], l, slice(None))
                       for l in range(4)], 1)
    ref = ablation_effects_loop(copy.deepcopy(model).double(), x.double(), target="predicted")
    close(got.double(), ref, tol=1e-5)


def test_large_logprob_changes_are_finite():
    model = make("none", "pre", seed=0, n_layers=4, n_out=3, spread=0.3)
    x = 3 * torch.randn(7, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    fast = ablation_effects(model, x, target="logprob", labels=y)
    assert torch.isfinite(fast).all()
    close(fast, ablation_effects_loop(model, x, target="logprob", labels=y), tol=1e-9)


def test_joint_ablation():
    model = make("rms", "post", seed=9)
    x = torch.randn(4, 6, dtype=torch.float64)
    single = ablation_effects(model, x)
    mask = torch.zeros(4, 3, 5, dtype=torch.bool)
    mask[torch.arange(4), torch.tensor([0, 1, 2, 1]), torch.tensor([4, 0, 2, 3])] = True
    joint = joint_ablation_effect(model, x, mask, target="predicted")
    close(joint, single[mask])
    both = mask.clone()
    both[:, 0, 1] = True
    clean = model.run(x)
    with torch.no_grad():
        y = model.head(_forward_zeroing(model, x, both))
    u = torch.nn.functional.one_hot(clean.logits.argmax(-1), 4).double()
    close(joint_ablation_effect(model, x, both, target="predicted"),
          ((y - clean.logits) * u).sum(-1))


def _forward_zeroing(model, x, mask):
    """Post-norm forward with z[mask] := 0 (independent of `run`'s patch code)."""
    h = model.embed(x)
    for l, layer in enumerate(model.layers):
        z = (h @ layer.L.T) * (h @ layer.R.T)
        z = torch.where(mask[:, l], 0.0, z)
        h, _, _ = layer.norm(h + z @ layer.D.T)
    return h


def test_errors():
    model = make()
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(BilensError, match="layers"):
        ablation_effects(model, x, layers=[5])
    with pytest.raises(BilensError, match="channels"):
        ablation_effects(model, x, channels=[9])
    with pytest.raises(BilensError, match="memory"):
        ablation_effects(model, x, memory="lots")
    with pytest.raises(BilensError, match="precision"):
        ablation_effects(model, x, precision="fp8")
    with pytest.raises(BilensError, match="labels"):
        ablation_effects(model, x, target="logprob")
    assert parse_memory("4GiB") == 4 * 2**30 and parse_memory("512MB") == 512 * 10**6
    assert channel_mask(3, 5, layers=[1]).sum() == 5


def test_channels_mapping_with_a_layer_out_of_range_raises():
    """`{layer: indices}` with no such layer must not wrap around to another layer."""
    with pytest.raises(BilensError, match="layer 5 is out of range"):
        channel_mask(3, 5, channels={5: [1]})
    with pytest.raises(BilensError, match="out of range"):
        ablation_effects(make(), torch.randn(2, 6, dtype=torch.float64), channels={-4: [0]})
    assert channel_mask(3, 5, channels={-1: [1]})[2, 1]


def test_cpu_workers_and_progress_do_not_change_results():
    model = make("rms", "pre", seed=10, n_layers=3)
    x = torch.randn(9, 6, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ablation_effects(model, x, memory=2000)
        torch.set_num_threads(3)
        many = ablation_effects(model, x, memory=2000, progress=True)
        assert torch.get_num_threads() == 3                      # restored after the workers
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("fn", [ablation_effects, ablation_effects_loop])
def test_resolved_target_of_another_batch_is_refused(fn):
    """A 1-row Target must not silently apply to every input."""
    from bilens.core.targets import Target

    model = make()
    x = torch.randn(5, 6, dtype=torch.float64)
    one_row = Target(direction=torch.ones(1, 4, dtype=torch.float64))
    with pytest.raises(BilensError, match="one row per input"):
        fn(model, x, target=one_row)


def test_triton_failure_falls_back_to_cublas_with_a_warning():
    """Forced onto the Triton GEMMs where they cannot run (a CPU tensor, or no Triton), the
    plan says so once and finishes on the cuBLAS path with the same numbers."""
    model = make("rms", "post", seed=8, d_in=32, d_model=64, d_hidden=64, n_layers=4,
                 n_out=10, spread=0.0, dtype=torch.float32)
    x = torch.randn(8, 32)
    _, clean, tgt, b = prepare(model, x, "predicted", "zero", None, None)
    with pytest.warns(RuntimeWarning, match="Triton GEMMs failed"):    # at import or at launch
        plan = Plan(model, precision="3xtf32", backend="triton")
        got = torch.stack([plan.effects(clean, tgt, b[:, l] - clean.z[:, l], l, slice(None))
                           for l in range(4)], 1)
    assert plan.triton_error is not None and not plan.k.triton
    ref = ablation_effects_loop(copy.deepcopy(model).double(), x.double(), target="predicted")
    close(got.double(), ref, tol=1e-5)

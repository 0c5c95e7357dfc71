"""The node oracle's split products (`precision="3xtf32"`): float32-level accurate against the
float64 oracle, for every norm x position and every held flag; and how the backend and
precision are chosen, refused or fall back; the compiled steps. (The Triton GEMMs of
`backend="triton"` run under Triton's interpreter in `tests/triton_interpreted.py`.)

On a CPU the split path runs as float32 products of TF32-exact halves: each product of two
halves is exact in float32 (11 x 11 significant bits), so this is the arithmetic of the tensor
cores up to the order of the sums, and a dropped correction term shows here as it would there.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CASES
from test_sequence import FLAGS, rel, tiny_transformer, tokens_for
from torch.testing import assert_close

import bilens
from bilens.ablation._engine import steps
from bilens.ablation._engine.backend import triton_available
from bilens.ablation._engine.sequence_plan import SequencePlan
from bilens.ablation.sequence import (
    ablate_prepared,
    sequence_ablation_effects,
)
from bilens.attribution.sequence import attribute_sequence
from bilens.core.errors import BilensError
from bilens.core.sequence import prepare_sequence


def _oracle(model, tokens, precision, fn, fa):
    _, run, tgt, b = prepare_sequence(model, tokens, "next", None, "zero", None, None)
    return ablate_prepared(model, run, tgt, b, frozen_norm=fn, frozen_attn=fa,
                           layers=list(range(model.config.n_layers)), memory="64MiB",
                           progress=False, precision=precision)


def _wide(norm, position):
    """A float64 transformer wide enough that a TF32-only product (2^-11) stands out."""
    return tiny_transformer(norm, position, n_layers=3, d_model=32, d_hidden=48, n_heads=4,
                            vocab_size=40)


@pytest.mark.parametrize("norm,position", CASES)
def test_split_products_match_float64(norm, position):
    model64 = _wide(norm, position)
    tokens = tokens_for(model64, n=2, seq=7)
    model32 = _wide(norm, position).float()
    for fn, fa in FLAGS:
        want = _oracle(model64, tokens, "fp32", fn, fa)
        got = _oracle(model32, tokens, "3xtf32", fn, fa).double()
        assert rel(got, want) < 1e-5, (fn, fa)


def test_a_tf32_only_product_would_fail(monkeypatch):
    """The tolerance above is tight enough: products of the high halves alone (plain TF32)
    are off by far more than 1e-5."""
    model64 = _wide("rms", "pre")
    tokens = tokens_for(model64, n=2, seq=7)
    want = _oracle(model64, tokens, "fp32", False, False)

    def hi_only(self, x, w):
        w2, w_lo = w
        flat = x.reshape(-1, x.shape[-1])[:, :w_lo.shape[0]]
        return (flat @ w2[:w_lo.shape[0]]).view(*x.shape[:-1], w_lo.shape[-1])

    monkeypatch.setattr(steps.Kernels, "mm", hi_only)
    got = _oracle(_wide("rms", "pre").float(), tokens, "3xtf32", False, False).double()
    assert rel(got, want) > 1e-5


def test_plan_splits_only_when_asked():
    model = _wide("rms", "pre").float()
    _, run, tgt, b = prepare_sequence(model, tokens_for(model), "next", None, "zero", None,
                                      None)
    assert SequencePlan(model, run, tgt, b, precision="3xtf32").kernels.split
    assert not SequencePlan(model, run, tgt, b).kernels.split
    with pytest.raises(ValueError, match="precision"):
        SequencePlan(model, run, tgt, b, precision="3xfp16")
    with pytest.raises(ValueError, match="precision"):
        SequencePlan(model, run, tgt, b, precision="fp32", backend="triton")


def _all_effects(plan):
    """Every node of layers 0 .. L-2 (the last layer's only at `p`) of all rows."""
    B, L, T, _ = plan.run.z.shape
    return torch.stack([torch.stack([plan.effects(l, t, slice(0, B), slice(None))
                                     for t in range(T)], 1) for l in range(L - 1)], 1)


@pytest.mark.parametrize("norm,position", [("rms", "pre"), ("layer", "post")])
def test_compiled_steps_equal_eager(norm, position, monkeypatch):
    """`backend="compile"`: the steps through dynamo's graph capture with symbolic shapes and
    functionalized in-place ops (`aot_eager`: inductor's code generation is for the GPU, where
    `benchmarks/lm_oracle.py` checks it against float64 before timing) equal the eager steps
    in float64, with no fallback to eager. (Without a norm no norm step runs; both norms and
    both positions in two cases, the statistics and patterns live in one and held in the
    other, as each graph takes seconds of tracing.)"""
    real = torch.compile
    monkeypatch.setattr(torch, "compile",
                        lambda fn, **kw: real(fn, backend="aot_eager", **kw))
    model = _wide(norm, position)
    tokens = tokens_for(model, n=2, seq=7)
    _, run, tgt, b = prepare_sequence(model, tokens, "next", None, "zero", None, None)
    held = position == "post"                              # live pre-norm, held post-norm
    plan = SequencePlan(model, run, tgt, b, frozen_norm=held, frozen_attn=held,
                        backend="compile")
    got = _all_effects(plan)
    assert plan.kernels.compile_steps and plan.kernels.compile_error is None
    want = _all_effects(SequencePlan(model, run, tgt, b, frozen_norm=held, frozen_attn=held))
    assert rel(got, want) < 1e-12


def test_compiled_step_is_one_graph_for_every_batch(monkeypatch):
    """`Kernels.step` compiles one graph for batches whose sizes and storage offsets happen
    to coincide or not (rows equal to positions, then not; clean statistics read at
    different rows and positions): with duck sizing each coincidence was guarded and every
    batch that broke it compiled another graph."""
    from torch._dynamo.utils import counters

    from bilens.ablation._engine.sequence_steps import norm_change
    from bilens.ablation._engine.steps import Kernels

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager", **kw))
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    step = Kernels("fp32", "compile").step(norm_change)
    scale, centred = torch.rand(9, 10, 3) + 0.5, torch.randn(9, 10, 3, 8)
    gamma = torch.rand(8)
    for b, S, r0, t in ((4, 4, 0, 2), (5, 4, 3, 1), (3, 6, 2, 4), (6, 2, 1, 5), (2, 3, 7, 3)):
        s = scale[r0:r0 + b, t:t + S, 1][:, None, :, None]
        r = centred[r0:r0 + b, t:t + S, 1][:, None]
        dh = torch.randn(b, 3, S, 8)
        assert_close(step(False, False, dh, s, r, gamma), norm_change(False, False, dh, s, r,
                                                                     gamma))
    assert counters["stats"]["unique_graphs"] - before == 1


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("backend,precision", [("eager", "3xtf32"), ("compile", "fp32"),
                                               ("compile", "3xtf32"), ("triton", "3xtf32"),
                                               ("triton", "3xfp16")])
def test_gpu_backends_match_float64(backend, precision):
    """On a GPU, each backend's oracle (inductor's kernels, cuBLAS's TF32 products, the
    Triton GEMMs) against the float64 oracle."""
    if backend == "triton" and not triton_available():
        pytest.skip("needs Triton")
    model64 = _wide("layer", "pre").cuda()
    tokens = tokens_for(model64, n=2, seq=7).cuda()
    want = sequence_ablation_effects(model64, tokens, target="next")
    got = sequence_ablation_effects(_wide("layer", "pre").float().cuda(), tokens,
                                    target="next", backend=backend, precision=precision)
    assert rel(got.double(), want) < 1e-5


@needs_cuda
@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_gpu_triton_oracle_with_held_statistics_matches_float64(norm):
    """The Triton norm kernel's held-statistic branch (`actual_frozen_norm`) on a GPU,
    against the float64 oracle that holds them too."""
    if not triton_available():
        pytest.skip("needs Triton")
    model64 = _wide(norm, "pre").cuda()
    tokens = tokens_for(model64, n=2, seq=7).cuda()
    want = sequence_ablation_effects(model64, tokens, target="next", frozen_norm=True)
    got = sequence_ablation_effects(_wide(norm, "pre").float().cuda(), tokens, target="next",
                                    frozen_norm=True, backend="triton", precision="3xfp16")
    assert rel(got.double(), want) < 1e-5


@needs_cuda
@pytest.mark.parametrize("backend,precision", [("eager", "fp32"), ("triton", "3xfp16")])
def test_gpu_oracle_batches_never_wait_for_the_device(backend, precision):
    """Once a plan is built, its batches of ablations (nodes and features) queue their
    kernels without one host sync (`torch.cuda.set_sync_debug_mode("error")` raises on
    any), so the host runs ahead of the GPU; a batch that read `p` off the device waited
    for every kernel queued before it."""
    if backend == "triton" and not triton_available():
        pytest.skip("needs Triton")
    model = _wide("rms", "pre").float().cuda()
    tokens = tokens_for(model, n=3, seq=7).cuda()
    _, run, tgt, b = prepare_sequence(model, tokens, "next", None, "zero", None, None)
    plan = SequencePlan(model, run, tgt, b, backend=backend, precision=precision)
    batches = [(l, t) for l in range(model.config.n_layers) for t in (0, 3, None)]
    for l, t in batches:                                   # compiles, outside the check
        plan.effects(l, t, slice(0, 3), slice(None))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for l, t in batches:
            plan.effects(l, t, slice(1, 3), slice(0, 5))
    finally:
        torch.cuda.set_sync_debug_mode(0)


@needs_cuda
@pytest.mark.parametrize("norm,position,target", [
    ("rms", "pre", "next"), ("layer", "pre", "mean-logprob"), ("rms", "post", "mean-logprob"),
    ("layer", "post", "next")])
def test_gpu_renorm_kernel_matches_float64(norm, position, target):
    """`renorm`'s closed form by its Triton kernel (`backend="triton"`) on a GPU against the
    eager closed form of the float64 model; a fallback to eager (a warning) fails it."""
    import warnings

    if not triton_available():
        pytest.skip("needs Triton")
    model64 = _wide(norm, position).cuda()
    tokens = tokens_for(model64, n=2, seq=7).cuda()
    want = attribute_sequence(model64, tokens, target=target, mode="renorm")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = attribute_sequence(_wide(norm, position).float().cuda(), tokens, target=target,
                                 mode="renorm", backend="triton")
    assert rel(got.double(), want) < 1e-5


@needs_cuda
def test_gpu_verify_with_triton_runs_the_renorm_kernel(monkeypatch):
    """`verify(..., backend="triton")` on a sequence model also runs `renorm`'s closed form
    as its kernel, and its `predicted.renorm` is the eager one's."""
    if not triton_available():
        pytest.skip("needs Triton")
    from bilens.analysis.verify_sequence import verify_sequence
    from bilens.attribution import triton_renorm

    calls = []
    kernel = triton_renorm.renorm_closed_form
    monkeypatch.setattr(triton_renorm, "renorm_closed_form",
                        lambda *a, **k: calls.append(1) or kernel(*a, **k))
    model = _wide("rms", "pre").float().cuda()
    tokens = tokens_for(model, n=2, seq=7).cuda()
    r = verify_sequence(model, tokens, target="next", backend="triton", precision="3xtf32",
                        progress=False, circuit_ks=(), features=False)
    assert len(calls) == model.config.n_layers
    want = attribute_sequence(model, tokens, target="next", mode="renorm")
    assert rel(r.tensors["predicted.renorm"].double(), want.double()) < 1e-5


def test_attribution_backend_is_checked_and_falls_back_off_cuda():
    """`backend=` of the sequence attribution: `"triton"` off CUDA runs `renorm`'s closed form
    eager with one warning (the same numbers), says nothing for modes without a closed form,
    and a name it has not is refused."""
    import warnings

    model = tiny_transformer().float()
    tokens = tokens_for(model)
    plain = attribute_sequence(model, tokens, target="next", mode="renorm")
    with pytest.warns(RuntimeWarning, match="renorm's closed form needs CUDA"):
        got = attribute_sequence(model, tokens, target="next", mode="renorm", backend="triton")
    assert torch.equal(got, plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        attribute_sequence(model, tokens, target="next", mode="live", backend="triton")
    with pytest.raises(BilensError, match="backend: expected one of"):
        attribute_sequence(model, tokens, target="next", mode="live", backend="compile")


def test_entry_points_resolve_the_backend():
    """The sequence oracle takes `bilens.ablation_effects`'s backends and precisions: names
    and pairs it has not are refused before any work; off CUDA it runs eager float32 with
    one warning, and verify records what ran."""
    model = tiny_transformer().float()
    tokens = tokens_for(model)
    for kw, match in ((dict(precision="bf16"), "precision: expected one of"),
                      (dict(backend="cuda"), "backend: expected one of"),
                      (dict(precision="3xfp16"), "exists only as Triton"),
                      (dict(backend="triton", precision="fp32"), "runs split products")):
        for call in (sequence_ablation_effects, bilens.feature_ablation_effects):
            with pytest.raises(BilensError, match=match):
                call(model, tokens, target="next", **kw)
    with pytest.warns(RuntimeWarning, match="need CUDA"):
        r = bilens.verify(model, tokens, target="next", backend="triton", progress=False,
                          circuit_ks=())
    assert (r.metrics["info"]["backend"], r.metrics["info"]["precision"]) == ("eager", "fp32")


def test_split_products_on_the_cpu_fall_back():
    """On a CPU `3xtf32` falls back (one warning) and gives the float32 result exactly."""
    model = tiny_transformer().float()
    tokens = tokens_for(model)
    plain = sequence_ablation_effects(model, tokens, target="next")
    with pytest.warns(RuntimeWarning, match="need CUDA"):
        got = sequence_ablation_effects(model, tokens, target="next", precision="3xtf32")
    assert torch.equal(got, plain)


def test_pattern_change_is_zero_at_masked_keys_when_every_score_falls():
    """A masked key (`P = 0`) has no change, also when every live score falls so far that
    `dL` is very negative and `expm1(dS - dL)` at the masked key overflows (0 * inf was NaN)."""
    from bilens.ablation._engine.sequence_steps import pattern_change

    P = torch.tensor([[1.0, 0.0], [1.0, 0.0]])            # one live key: nothing changes
    dS = torch.tensor([[-100.0, 0.0], [-120.0, 0.0]])     # masked scores' change is 0
    got = pattern_change(P, dS.clone())
    assert torch.equal(got, torch.zeros(2, 2))


@pytest.mark.parametrize("case", ["tiny", "moderate", "uniform shift down", "spike at a rare key"])
def test_pattern_change_accurate_relative_to_its_size(case):
    """`pattern_change` in float32 against the float64 softmax difference, where a plain
    float32 difference would lose digits (tiny changes) or overflow (large ones)."""
    from bilens.ablation._engine.sequence_steps import pattern_change

    g = torch.Generator().manual_seed(3)
    S = 3 * torch.randn(64, 12, generator=g, dtype=torch.float64)
    dS = {"tiny": 1e-4 * torch.randn(64, 12, generator=g, dtype=torch.float64),
          "moderate": 3 * torch.randn(64, 12, generator=g, dtype=torch.float64),
          "uniform shift down": torch.full((64, 12), -8.0, dtype=torch.float64)
          + 0.1 * torch.randn(64, 12, generator=g, dtype=torch.float64),
          "spike at a rare key": torch.zeros(64, 12, dtype=torch.float64)}[case]
    if case == "spike at a rare key":
        S[:, 0], dS[:, 0] = -25.0, 60.0                  # P ~ 1e-12 there, then dominant
    P, dS = S.softmax(-1).float().double(), dS.float().double()   # the inputs as float32
    want = (S + dS).softmax(-1) - S.softmax(-1)
    got = pattern_change(P.float(), dS.float()).double()
    assert torch.isfinite(got).all()
    assert rel(got, want) < 1e-5


@needs_cuda
@pytest.mark.parametrize("backend,mode,target", [("eager", "renorm", "next"),
                                                 ("triton", "renorm", "next"),
                                                 ("eager", "live", "predicted")])
def test_gpu_captured_attribution_replays_each_batch(backend, mode, target):
    """`CapturedAttribution` records one call as a real CUDA graph (a host sync inside it,
    or a kernel Triton had not tuned yet, fails the capture), and each replay on a new batch
    and new positions equals `attribute_sequence` there."""
    from bilens.attribution import CapturedAttribution

    if backend == "triton" and not triton_available():
        pytest.skip("needs Triton")
    model = _wide("rms", "pre").float().cuda()
    att = CapturedAttribution(model, tokens_for(model, n=3, seq=7, seed=0).cuda(),
                              target=target, mode=mode, backend=backend)
    for seed, position in ((1, None), (2, torch.tensor([1, 5, 3]))):
        tokens = tokens_for(model, n=3, seq=7, seed=seed).cuda()
        pos = None if position is None else position.cuda()
        want = attribute_sequence(model, tokens, target=target, mode=mode, position=pos,
                                  backend=backend)
        assert rel(att(tokens, position=pos), want) < 1e-6

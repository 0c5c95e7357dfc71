"""The Triton GEMMs of exhaustive ablation (`bilens.triton_ops`) against float64.

Where Triton is installed (`./setup.sh --dev` installs it beside the CPU build of torch):
- every kernel runs on the CPU under Triton's interpreter against float64, alone and as the
  Triton suffix of `Plan.effects` (`tests/triton_interpreted.py`, in a subprocess, since
  `TRITON_INTERPRET=1` must be set before Triton is first imported);
- every kernel is compiled for Hopper (sm_90) without a GPU, which catches type errors that
  the interpreter lets through: one autotune shape per kernel and precision on a machine
  without CUDA (each compile takes seconds), every shape on a GPU machine or with
  `BILENS_TEST_ALL_SHAPES=1`.
On a CUDA device the kernels also run for real (the GPU run of `benchmarks/gpu.sh`), and
`bilens bench` re-checks every timed result.
"""

import importlib.util
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from test_ablation import make

from bilens.ablation import ablation_effects
from bilens.ablation._engine.backend import triton_available

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and triton_available()),
    reason="needs CUDA and Triton (the fused Triton GEMMs run on the GPU only)")
needs_triton = pytest.mark.skipif(
    not triton_available(), reason="needs Triton (it ships with CUDA builds of torch)")
SHARED_MEMORY = 232448                   # bytes a Hopper block may use (227 KiB)
ALL_SHAPES = torch.cuda.is_available() or os.environ.get("BILENS_TEST_ALL_SHAPES") == "1"


def _model(norm, pos, n_layers=4, seed=0):
    # sizes that are not multiples of the tiles: every mask in the kernels is exercised
    return make(norm, pos, seed=seed, d_in=16, d_model=48, d_hidden=80, n_layers=n_layers,
                n_out=10, spread=0.0, dtype=torch.float32).cuda()


def _error(got, ref):
    got, ref = got.double().cpu(), ref.double().cpu()
    return ((got - ref).abs().max() / ref.abs().max()).item()


PRECISIONS = ["3xtf32", "3xfp16"]


@pytest.fixture
def eager_steps(monkeypatch):
    """The Triton GEMMs with the elementwise steps left eager: `torch.compile` uses static
    shapes, so every new batch or chunk size would recompile (tens of seconds each on a
    cold cache). One test below keeps the compiled steps end to end."""
    import bilens.ablation.ablate
    from bilens.ablation._engine.plan import Plan

    def plan(model, frozen=False, precision="fp32", backend="triton"):
        return Plan(model, frozen, precision, backend=backend, compile_steps=False)
    monkeypatch.setattr(bilens.ablation.ablate, "Plan", plan)


@needs_triton
@pytest.mark.parametrize("f16", [False, True])
def test_kernels_compile_for_hopper(f16):
    """Every kernel compiles for sm_90 in each precision (no GPU needed), and for each kernel
    at least one autotune shape fits in shared memory (all of them in float16). Without
    CUDA only the first shape of each precision is compiled (see the module docstring)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bilens.ablation._engine import triton_ops as T

    halves = ("dh_ptr", "dl_ptr", "lh_ptr", "ll_ptr", "rh_ptr", "rl_ptr")
    for kernel, extra in [(T._entry_down_kernel, {"HAS_Q": True}), (T._lr_dz_kernel, {}),
                          (T._down_kernel, {"ADD": 1})]:
        fits = 0
        configs = T.configs_for(kernel.configs, f16)
        if not ALL_SHAPES:   # the first shape this precision tries; for float16 the first
            configs = [next(c for c in configs if T.f16_only(c) == f16)]  # only it can afford
        for cfg in configs:
            consts = dict(D=256, F16=f16, **extra, **cfg.kwargs)
            sig = {n: "constexpr" if n in consts else "*i64" if n == "ks_ptr"
                   else ("*fp16" if f16 and n in halves else "*fp32") if n.endswith("_ptr")
                   else "fp32" if n.endswith("scale") else "i32" for n in kernel.fn.arg_names}
            compiled = triton.compile(ASTSource(kernel.fn, sig, consts),
                                      target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": cfg.num_warps,
                                               "num_stages": cfg.num_stages})
            fits += compiled.metadata.shared <= SHARED_MEMORY
            assert compiled.metadata.shared <= SHARED_MEMORY or not f16, (kernel.fn.__name__, cfg)
        assert fits >= 1, f"{kernel.fn.__name__}: no autotune shape fits in shared memory"


@needs_triton
def test_attention_kernel_compiles_for_hopper():
    """The attention-change kernel (`triton_attention`) compiles for sm_90 with the warps
    and stages it launches with, and its largest blocks fit in 96 KiB of shared memory (no GPU
    needed; the H200 has 227 KiB, an A100 164 KiB). By default one variant (CI time: each
    compile takes seconds): d_head 64, the one a model of up to 64 tokens runs (every key in
    one block), the changes at every position (the heavier case), `AMAX` on; with
    `ALL_SHAPES`, every d_head block, both walks and both cases of where the changes are."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bilens.ablation._engine import triton_attention as A

    kernel = A._attention_change_kernel
    variants = ([(bd, single, at_t) for bd in A._LAUNCH for single in (True, False)
                 for at_t in (True, False)] if ALL_SHAPES else [(64, True, False)])
    for bd, single, at_t in variants:
        bq, bj, warps = A._LAUNCH[bd]
        consts = dict(DQ_AT_T=at_t, AMAX=True, SINGLE=single, BQ=bq, BJ=bj, BD=bd)
        sig = {n: "constexpr" if n in consts else "*i64" if n == "qpos_ptr"
               else "*fp32" if n.endswith("_ptr") else "fp32" if n == "scale" else "i32"
               for n in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, sig, consts),
                                  target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": warps, "num_stages": A._STAGES})
        assert compiled.metadata.shared <= 96 * 1024, (bd, single, at_t, compiled.metadata.shared)


@needs_triton
def test_norm_change_kernel_compiles_for_hopper():
    """The norm-change kernel (`triton_norm`) compiles for sm_90 at d_model 256 with
    LayerNorm's centring, the live statistic and `max|out|` on (its heaviest case), with
    its arguments typed as the launch passes them (`tiny` a float32 argument, not a
    literal: the H200's Triton once read such a literal as float64)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bilens.ablation._engine import triton_norm as N

    kernel = N._norm_change_kernel
    consts = dict(CENTRE=True, FROZEN=False, TOP=True, BR=N._ROWS, BD=256)
    sig = {n: "constexpr" if n in consts else "*fp32" if n.endswith("_ptr")
           else "fp32" if n == "tiny" else "i32" for n in kernel.arg_names}
    compiled = triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 4})
    assert compiled.metadata.shared <= 96 * 1024


@needs_triton
def test_renorm_kernel_compiles_for_hopper():
    """`renorm`'s closed-form kernel (`attribution.triton_renorm`) compiles for sm_90 at the
    issue's d_model 256, with pre-norm's swap (two accumulators) and LayerNorm's centring
    (its heaviest case), and post-norm's change without it, and fits in shared memory: its
    first autotune shape without CUDA, every shape and both cases on a GPU machine or with
    `BILENS_TEST_ALL_SHAPES=1`."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bilens.attribution import triton_renorm as R

    kernel = R._renorm_kernel
    configs = kernel.configs if ALL_SHAPES else kernel.configs[:1]
    for swap in ([True, False] if ALL_SHAPES else [True]):
        for cfg in configs:
            consts = dict(D=256, SWAP=swap, CENTRE=swap, **cfg.kwargs)
            sig = {n: "constexpr" if n in consts else "*fp32" if n.endswith("_ptr")
                   else "fp32" if n == "tiny" else "i32" for n in kernel.fn.arg_names}
            compiled = triton.compile(ASTSource(kernel.fn, sig, consts),
                                      target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": cfg.num_warps,
                                               "num_stages": cfg.num_stages})
            assert compiled.metadata.shared <= SHARED_MEMORY, (swap, cfg)


@needs_gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("pos", ["post", "pre"])
@pytest.mark.parametrize("norm", ["rms", "layer", "none"])
def test_triton_matches_float64(norm, pos, frozen, precision, eager_steps):
    model = _model(norm, pos)
    x = torch.randn(37, 16, device="cuda")
    with warnings.catch_warnings():                  # a fallback to cuBLAS fails the test
        warnings.filterwarnings("error", message=".*Triton GEMMs failed")
        got = ablation_effects(model, x, target="predicted", frozen_norm=frozen,
                               precision=precision, backend="triton")
    ref = ablation_effects(model.double(), x.double(), target="predicted", frozen_norm=frozen)
    assert _error(got, ref) < 1e-5


@needs_gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_triton_with_compiled_steps(precision):
    """The path `bilens bench` times: Triton GEMMs and `torch.compile`d steps together."""
    model = _model("rms", "post", seed=7)
    x = torch.randn(64, 16, device="cuda")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Triton GEMMs failed")
        got = ablation_effects(model, x, target="predicted", precision=precision, backend="triton")
    ref = ablation_effects(model.double(), x.double(), target="predicted")
    assert _error(got, ref) < 1e-5


@needs_gpu
@pytest.mark.parametrize("scale", [1e-3, 30.0])
def test_float16_halves_keep_accuracy_far_from_unit_scale(scale, eager_steps):
    """float16 has little range: the power-of-two scaling must keep tiny and large
    activations and weights float32-accurate."""
    model = _model("none", "pre", seed=4)
    with torch.no_grad():
        for layer in model.layers:
            layer.L.mul_(3.0)
            layer.D.mul_(1 / scale)
    x = scale * torch.randn(19, 16, device="cuda")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Triton GEMMs failed")
        got = ablation_effects(model, x, target="predicted", precision="3xfp16", backend="triton")
    ref = ablation_effects(model.double(), x.double(), target="predicted")
    assert torch.isfinite(got).all()
    assert _error(got, ref) < 1e-5


@needs_gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n_layers", [2, 3, 5])
def test_triton_subsets_targets_and_depths(n_layers, precision, eager_steps):
    model = _model("rms", "pre", n_layers=n_layers, seed=n_layers)
    x = torch.randn(23, 16, device="cuda")
    y = torch.randint(0, 10, (23,), device="cuda")
    channels = {0: [3, 0, 79, 17], n_layers - 2: list(range(5, 60))}
    for target in ("logprob", "label"):
        got = ablation_effects(model, x, target=target, labels=y, channels=channels,
                               precision=precision, backend="triton")
        ref = ablation_effects(model.double(), x.double(), target=target, labels=y,
                               channels=channels)
        assert torch.equal(got.isnan().cpu(), ref.isnan().cpu())
        keep = ~ref.isnan()
        assert _error(got[keep], ref[keep]) < 1e-5


@needs_triton
def test_float16_only_shapes_are_pruned_for_tf32():
    from bilens.ablation._engine import triton_ops as T

    configs = T._lr_dz_kernel.configs
    tf32 = T._prune(configs, {}, F16=False)
    f16 = T._prune(configs, {}, F16=True)
    assert set(map(id, tf32)) < set(map(id, f16)) == set(map(id, configs))
    assert all(c.kwargs["BK"] <= 32 for c in tf32) and any(c.kwargs["BK"] == 64 for c in f16)


@needs_triton
def test_autotune_configs_survive_the_disk_cache():
    """Triton's `cache_results` writes each config's attributes as JSON and rebuilds it with
    `Config(**attributes)` in a later process: an attribute of ours made that raise on the
    H200 (session 11)."""
    import json

    import triton

    from bilens.ablation._engine import triton_ops as T

    for kernel in (T._lr_dz_kernel, T._down_kernel, T._entry_down_kernel):
        for config in kernel.configs:
            again = triton.Config(**json.loads(json.dumps(config.__dict__)))
            assert str(again) == str(config)


INTERPRETED = Path(__file__).with_name("triton_interpreted.py")


def _interpreter_problem() -> str | None:
    """Why Triton's CPU interpreter cannot run here, or None."""
    from importlib.metadata import version

    if importlib.util.find_spec("triton") is None:
        return "needs Triton: ./setup.sh --dev installs it (CUDA builds of torch ship it)"
    triton_v, numpy_v = version("triton"), version("numpy")
    major_minor = lambda v: tuple(int(p) for p in v.split(".")[:2])  # noqa: E731
    if major_minor(triton_v) < (3, 9) and major_minor(numpy_v) >= (2, 4):
        return (f"Triton {triton_v}'s CPU interpreter fails with numpy {numpy_v} (3.5.1 does; "
                f"3.9.0 works): pip install 'triton>=3.9' or 'numpy<2.4'")
    return None


@pytest.mark.skipif(_interpreter_problem() is not None, reason=str(_interpreter_problem()))
def test_kernels_under_the_interpreter_match_float64():
    """`tests/triton_interpreted.py` in a fresh interpreter with `TRITON_INTERPRET=1` (set
    before Triton's import; this process may have imported Triton already)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(INTERPRETED)], cwd=INTERPRETED.parent.parent, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout, done.stdout[-2000:]
    print(f"interpreted kernels: {time.perf_counter() - start:.1f} s")

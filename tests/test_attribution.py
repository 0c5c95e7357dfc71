"""Attribution (SPEC §4) against ablations, finite differences, autograd and the SPEC
reference, for every norm x position, in float64."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from reference import forward_one
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bilens.attribution.backward import gradients, gradients_autograd
from bilens.attribution.predict import (
    attribute,
    attribute_modes,
    batch_size_for,
    run_with_cache,
)
from bilens.core.baselines import from_inputs
from bilens.core.config import ModelConfig
from bilens.core.errors import BilensError
from bilens.core.models.intervention import Intervention
from bilens.core.models.mlp import BilinearNet
from bilens.core.targets import resolve_target

torch.set_num_threads(1)     # tiny float64 models: threads only contend on a shared machine

NORMS = ["none", "rms", "layer"]
POSITIONS = ["post", "pre"]
CASES = [(n, p) for n in NORMS for p in POSITIONS]
B, D_IN, N_OUT = 5, 6, 4



def attribute_with_run(model, x, mode="renorm", **kwargs):
    """`attribute` and the clean run it used (`attribute_modes` with one mode)."""
    out = attribute_modes(model, x, modes=(mode,), **kwargs)
    return out.predicted[mode], out.run

def make_model(norm: str, position: str, n_layers: int = 3, seed: int = 0,
               d_model: int = 8, d_hidden: int = 10) -> BilinearNet:
    """A float64 model with every parameter perturbed (gains != 1, LayerNorm bias != 0)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(d_in=D_IN, d_model=d_model, d_hidden=d_hidden, n_layers=n_layers,
                      n_out=N_OUT, norm=norm, norm_position=position)
    model = BilinearNet(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def inputs(seed: int = 1, n: int = B) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ablate_layer(model, x, layer, b, target, scale=None):
    """actual[i, k] = f(x_i | z_{layer,k} := b[i, layer, k]) - f(x_i), for every k at once."""
    n, h = x.shape[0], model.config.d_hidden
    clean = model.run(x, Intervention(scale=scale))
    rows = x.repeat_interleave(h, 0)                                   # [n*h, d_in]
    mask = torch.eye(h, dtype=torch.bool).repeat(n, 1)                 # row (i, k) ablates k
    values = b[:, layer].repeat_interleave(h, 0)
    frozen = None if scale is None else scale.repeat_interleave(h, 0)
    run = model.run(rows, Intervention(scale=frozen, patch={layer: (mask, values)}))
    return target(run.logits.view(n, h, -1)) - target(clean.logits)[:, None]


@pytest.mark.parametrize("norm,position", CASES)
@pytest.mark.parametrize("baseline", ["zero", "mean", "tensor"])
def test_frozen_is_exact_for_last_layer(norm, position, baseline):
    """With every norm frozen at its clean statistics, the network after the last layer's
    z is linear: the frozen prediction IS the ablation, to rounding."""
    model, x = make_model(norm, position), inputs()
    reference = inputs(seed=7, n=20)
    spec = {"zero": "zero", "mean": "mean",
            "tensor": torch.randn(B, 3, 10, dtype=torch.float64)}[baseline]
    direction = torch.randn(B, N_OUT, dtype=torch.float64)
    pred, run = attribute_with_run(model, x, target=direction, mode="frozen", baselines=spec,
                                   reference=reference)
    b = {"zero": torch.zeros_like(run.z), "mean": model.run(reference).z.mean(0).expand_as(run.z),
         "tensor": spec}[baseline]
    target = resolve_target(direction, run.logits)
    actual = ablate_layer(model, x, 2, b, target, scale=run.scale)
    torch.testing.assert_close(pred[:, 2], actual, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("norm,position", CASES)
def test_frozen_last_layer_matches_spec_reference(norm, position):
    """The same identity against tests/reference.py (SPEC line by line, no model code)."""
    model, x = make_model(norm, position), inputs(n=1)
    pred, run = attribute_with_run(model, x, target="class:2", mode="frozen")
    sd, cfg = model.state_dict(), model.config.to_dict()
    frozen = run.scale[0].tolist()
    clean = forward_one(sd, cfg, x[0], frozen=frozen)[0][2]
    for k in (0, 3, 9):
        ablated = forward_one(sd, cfg, x[0], ablate=(2, k, 0.0), frozen=frozen)[0][2]
        assert abs((ablated - clean).item() - pred[0, 2, k].item()) < 1e-10


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("mode", ["frozen", "live"])
def test_no_norm_single_layer_is_exact(position, mode):
    """No norm, one layer: logits are linear in z, so prediction == real ablation."""
    model, x = make_model("none", position, n_layers=1), inputs()
    pred, run = attribute_with_run(model, x, target="diff:0,3", mode=mode)
    target = resolve_target("diff:0,3", run.logits)
    actual = ablate_layer(model, x, 0, torch.zeros_like(run.z), target)
    torch.testing.assert_close(pred[:, 0], actual, atol=1e-10, rtol=1e-10)
    sd, cfg = model.state_dict(), model.config.to_dict()
    clean = forward_one(sd, cfg, x[1])[0]
    ablated = forward_one(sd, cfg, x[1], ablate=(0, 4, 0.0))[0]
    assert abs((ablated[0] - ablated[3]) - (clean[0] - clean[3]) - pred[1, 0, 4]) < 1e-10


@pytest.mark.parametrize("norm,position", CASES)
@pytest.mark.parametrize("spec", ["predicted", "logprob"])
def test_live_is_the_finite_difference_of_the_real_network(norm, position, spec):
    """live g = central difference of f in z, every channel, statistics recomputed."""
    model, x = make_model(norm, position), inputs()
    labels = torch.tensor([0, 1, 2, 3, 0])
    run = model.run(x)
    target = resolve_target(spec, run.logits, labels)
    g = gradients(model, run, target, "live")
    n, n_layers, h = run.z.shape
    eye = torch.eye(n_layers * h, dtype=torch.float64).view(-1, n_layers, h)   # [L*H, L, H]
    rows = x.repeat_interleave(n_layers * h, 0)
    offset = eye.repeat(n, 1, 1)
    eps = 1e-5

    def f(sign):
        logits = model.run(rows, Intervention(z_offset=sign * eps * offset)).logits
        return target(logits.view(n, n_layers * h, -1)).view(n, n_layers, h)

    fd = (f(1) - f(-1)) / (2 * eps)
    torch.testing.assert_close(g, fd, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("norm,position", [("rms", "post"), ("layer", "pre")])
def test_live_matches_finite_difference_of_spec_reference(norm, position):
    model, x = make_model(norm, position), inputs(n=1)
    pred = attribute(model, x, target="class:1", mode="live")
    z = model.run(x).z
    sd, cfg = model.state_dict(), model.config.to_dict()
    eps = 1e-5
    for layer, k in ((0, 2), (1, 7)):
        z0 = z[0, layer, k].item()
        up = forward_one(sd, cfg, x[0], ablate=(layer, k, z0 + eps))[0][1]
        down = forward_one(sd, cfg, x[0], ablate=(layer, k, z0 - eps))[0][1]
        assert abs(-z0 * (up - down).item() / (2 * eps) - pred[0, layer, k].item()) < 1e-7


@pytest.mark.parametrize("norm,position", CASES)
@pytest.mark.parametrize("mode", ["frozen", "live"])
@pytest.mark.parametrize("spec", ["predicted", "logprob", "diff:1,2"])
def test_explicit_backward_equals_autograd(norm, position, mode, spec):
    model, x = make_model(norm, position), inputs()
    labels = torch.tensor([3, 1, 2, 0, 0])
    run = model.run(x)
    target = resolve_target(spec, run.logits, labels)
    explicit = gradients(model, run, target, mode)
    auto, _ = gradients_autograd(model, x, target, mode)
    torch.testing.assert_close(explicit, auto, atol=1e-10, rtol=1e-10)
    via_api = attribute(model, x, target=spec, mode=mode, labels=labels, method="autograd")
    torch.testing.assert_close(via_api, -run.z * explicit, atol=1e-10, rtol=1e-10)


def test_frozen_and_live_agree_without_norms_and_differ_with():
    x = inputs()
    for norm, same in (("none", True), ("rms", False), ("layer", False)):
        out = attribute_modes(make_model(norm, "post"), x, target="predicted", modes=("frozen",
                                                                                      "live"))
        close = torch.allclose(out.predicted["frozen"], out.predicted["live"], atol=1e-12)
        assert close == same, norm


class PeakBytes(TorchDispatchMode):
    """The peak of the bytes held by tensors that the ops inside allocated, counted per
    storage when an op returns it and released when the storage is freed: a measurement of
    the real code's memory, independent of any formula for it."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.held = 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self.held:              # views share their storage
                    self.held.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, size)
        return out

    def _free(self, key: int, size: int) -> None:
        self.held.discard(key)
        self.live -= size


@pytest.mark.parametrize("modes", [("frozen",), ("live",), ("frozen", "live"), ("renorm",),
                                   ("frozen", "live", "renorm")],
                         ids=lambda modes: "+".join(modes))
@pytest.mark.parametrize("norm,position", [("rms", "post"), ("layer", "pre"), ("none", "post")])
def test_default_chunk_follows_the_memory_budget(norm, position, modes):
    """A chunk of `batch_size_for` inputs really stays under the budget: the peak memory
    of its clean run and backward, measured, is at most `memory` (and not far below it)."""
    model = make_model(norm, position, d_model=16, d_hidden=32)
    memory = 2**20
    n = batch_size_for(model, 10_000, memory=memory, modes=modes)
    assert 10 < n < 10_000
    x = inputs(n=n)
    gc.collect()
    with PeakBytes() as measured:
        attribute_modes(model, x, target="predicted", modes=modes, memory=memory)
    assert memory / 2 < measured.peak <= memory, (measured.peak, memory)


def test_default_chunk_is_between_one_and_n():
    model = make_model("rms", "post")
    assert batch_size_for(model, 5, memory=2**30) == 5               # never more than n
    assert batch_size_for(model, 5, memory=1) == 1                   # never fewer than 1
    x = inputs(n=7)
    torch.testing.assert_close(attribute(model, x, target="predicted", mode="live"),
                               attribute(model, x, target="predicted", mode="live", memory=1),
                               atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("norm,position", CASES)
def test_batched_equals_one_by_one(norm, position):
    model, x = make_model(norm, position), inputs(n=7)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    direction = torch.randn(7, N_OUT, dtype=torch.float64)
    base = torch.randn(7, 3, 10, dtype=torch.float64)
    for spec in ("predicted", "logprob", labels, direction):
        for mode in ("frozen", "live"):
            whole = attribute(model, x, target=spec, mode=mode, baselines=base, labels=labels,
                              memory=1)
            for i in range(7):
                one_spec = spec[i:i + 1] if isinstance(spec, torch.Tensor) else spec
                one = attribute(model, x[i:i + 1], target=one_spec, mode=mode,
                                baselines=base[i:i + 1], labels=labels[i:i + 1])
                torch.testing.assert_close(whole[i:i + 1], one, atol=1e-12, rtol=1e-12)


def test_baselines_shift_the_prediction():
    model, x = make_model("rms", "post"), inputs()
    other, reference = inputs(seed=3), inputs(seed=4, n=30)
    run = model.run(x)
    g = gradients(model, run, resolve_target("predicted", run.logits), "live")
    mean = attribute(model, x, target="predicted", mode="live", baselines="mean",
                     reference=reference)
    torch.testing.assert_close(mean, (model.run(reference).z.mean(0) - run.z) * g)
    patched = attribute(model, x, target="predicted", mode="live", baselines=from_inputs(model,
                                                                                         other))
    torch.testing.assert_close(patched, (model.run(other).z - run.z) * g)
    shared = torch.randn(3, 10, dtype=torch.float64)
    torch.testing.assert_close(attribute(model, x, target="predicted", mode="live",
                                         baselines=shared),
                               (shared - run.z) * g)


def test_run_with_cache_and_the_attribution_run():
    model, x = make_model("layer", "pre"), inputs()
    logits, cache = run_with_cache(model, x)
    run = model.run(x)
    torch.testing.assert_close(logits, run.logits)
    torch.testing.assert_close(cache["layers.2.z"], run.z[:, 2])
    torch.testing.assert_close(cache["layers.1.norm.scale"], run.scale[:, 1])
    torch.testing.assert_close(cache["final_norm.scale"], run.scale[:, 3])
    assert {"layers.0.resid", "layers.0.left", "layers.0.right", "final"} <= cache.keys()
    pred, back = attribute_with_run(model, x)
    assert pred.shape == (B, 3, 10)
    torch.testing.assert_close(back.z, run.z)


@pytest.mark.parametrize("mode", ["frozen", "live", "renorm"])
def test_float32_model_stays_float32_and_accurate(mode):
    model = make_model("rms", "post")
    x = inputs()
    exact = attribute(model, x, target="predicted", mode=mode)
    pred = attribute(model.float(), x.float(), target="predicted", mode=mode)
    assert pred.dtype == torch.float32 and pred.shape == (B, 3, 10)
    assert (pred.double() - exact).abs().sum() / exact.abs().sum() < 1e-5


BAD = [
    (dict(target="class:4"), "out of range"),
    (dict(target=9), "out of range"),
    (dict(target="diff:0,7"), "out of range"),
    (dict(target=torch.randn(3)), "direction must have shape"),
    (dict(target=torch.randn(B, N_OUT + 1)), "direction must have shape"),
    (dict(target=torch.tensor([0, 1])), "one class per input"),
    (dict(target="logprob"), "needs the true labels"),
    (dict(target="label", labels=torch.tensor([0, 1, 2, 3, 9])), "labels"),
    (dict(target="bogus"), "unknown spec"),
    (dict(mode="frozn"), "mode"),
    (dict(method="numeric"), "method"),
    (dict(memory=0), "memory"),
    (dict(baselines="mean"), "reference"),
    (dict(baselines="median"), "baseline"),
    (dict(baselines=torch.zeros(2, 3, 10)), "baseline"),
    (dict(baselines=torch.full((3, 10), float("nan"))), "NaN"),
    (dict(inputs=torch.randn(B, D_IN + 1)), "expected shape"),
    (dict(inputs=torch.randn(D_IN)), "batch axis"),
    (dict(inputs=torch.full((B, D_IN), float("nan"))), "NaN"),
    (dict(baselines="mean", reference=torch.randn(4, 2)), "reference"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_input_raises_before_any_work(kwargs, message, monkeypatch):
    model = make_model("rms", "post")
    calls = []
    monkeypatch.setattr(model.embed, "forward", lambda *a, **k: calls.append(1))  # any run
    kwargs = {"inputs": inputs(), **kwargs}
    with pytest.raises(BilensError, match=message):
        attribute(model, **kwargs)
    assert not calls, "the model ran before the error"


# ---- result files and the command line ----

@pytest.fixture
def checkpoint(tmp_path):
    from bilens.core.checkpoint import save

    torch.manual_seed(0)
    cfg = ModelConfig(d_in=16, d_model=12, d_hidden=20, n_layers=2, n_out=4, norm="layer")
    path = tmp_path / "ckpt"
    save(BilinearNet(cfg), path, {"dataset": "synthetic"})
    return path


def test_results_round_trip(tmp_path):
    from bilens.analysis.results import load_results, save_results

    tensors = {"predicted": torch.randn(3, 2, 4, dtype=torch.float64).expand(3, 2, 4),
               "label": torch.tensor([1, 0, 2])}
    path, summary_path = save_results(tmp_path / "r.safetensors", tensors,
                                      {"nan": float("nan"), "t": torch.tensor(1.5)})
    assert summary_path == tmp_path / "r.json"
    back, summary = load_results(path)
    torch.testing.assert_close(back["predicted"], tensors["predicted"])
    assert summary == {"format": "bilens-results/1", "nan": None, "t": 1.5}
    summary_path.unlink()
    assert load_results(path)[1] == summary             # the copy in the header
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.safetensors"]   # no temp files


def test_results_interrupted_while_writing_leave_neither_file(tmp_path, monkeypatch):
    import json

    import bilens.analysis.results as results

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", interrupted)            # the summary's write is cut
    with pytest.raises(KeyboardInterrupt):
        results.save_results(tmp_path / "r.safetensors", {"predicted": torch.zeros(2, 1, 3)}, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("modes", ["frozen", "frozen,live"])
def test_cli_writes_spec_result_file(checkpoint, tmp_path, capsys, modes):
    import bilens
    from bilens.analysis.results import load_results
    from bilens.cli import main

    out = tmp_path / "attr.safetensors"
    argv = [
        "attribute", str(checkpoint), "--dataset", "synthetic", "--split", "test", "--n", "6",
        "--target", "diff:0,1", "--mode", modes, "--out", str(out), "--top", "3",
    ]
    assert main(argv) == 0
    tensors, summary = load_results(out)
    model = bilens.load(checkpoint)
    data = bilens.load_dataset("synthetic", "test", n=6)
    torch.testing.assert_close(tensors["inputs"], data.x)
    assert tensors["target"].shape == (6, 4) and tensors["activation"].shape == (6, 2, 20)
    for mode in modes.split(","):
        key = "predicted" if modes == mode else f"predicted.{mode}"
        torch.testing.assert_close(tensors[key], attribute(model, data.x, target="diff:0,1",
                                                           mode=mode))
    assert summary["modes"] == modes.split(",") and summary["n"] == 6
    printed = capsys.readouterr().out
    assert printed.count("input ") == 6 and "activation" in printed


def test_cli_logprob_records_labels(checkpoint, tmp_path):
    from bilens.analysis.results import load_results
    from bilens.cli import main

    out = tmp_path / "lp.safetensors"
    assert main(["attribute", str(checkpoint), "--n", "5", "--target", "logprob",
                 "--baseline", "mean", "--out", str(out)]) == 0
    tensors, summary = load_results(out)
    assert "label" in tensors and "target" not in tensors and summary["baseline"] == "mean"


@pytest.mark.parametrize("extra,message", [
    (["--target", "class:4"], "out of range"),
    (["--mode", "frozen,exact"], "--mode"),
    (["--baseline", "median"], "--baseline"),
    (["--dataset", "digits"], "width"),
    (["--n", "0"], "n:"),
])
def test_cli_bad_input_one_line_nonzero(checkpoint, tmp_path, capsys, extra, message):
    from bilens.cli import main

    out = tmp_path / "bad.safetensors"
    code = main(["attribute", str(checkpoint), "--n", "4", "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_resolved_target_and_labels_must_match_the_batch(monkeypatch):
    from bilens.core.targets import Target

    model = make_model("rms", "post")
    monkeypatch.setattr(model.embed, "forward",
                        lambda *a, **k: pytest.fail("ran before the error"))  # any run
    with pytest.raises(BilensError, match="one row per input"):
        attribute(model, inputs(), target=Target(direction=torch.ones(2, N_OUT,
                                                                      dtype=torch.float64)))
    with pytest.raises(BilensError, match="one per input"):
        attribute(model, inputs(), target="class:1", labels=torch.tensor([0, 1]))


def test_keep_run_false_drops_the_run():
    model, x = make_model("rms", "post"), inputs()
    out = attribute_modes(model, x, target="predicted", modes=("live",), keep_run=False, memory=1)
    assert out.run is None and out.predicted["live"].shape == (B, 3, 10)
    torch.testing.assert_close(out.predicted["live"], attribute(model, x, target="predicted",
                                                                mode="live"))


# ---- mode="renorm": live with the first norm an ablation reaches recomputed exactly ----

@pytest.mark.parametrize("norm,position", CASES)
@pytest.mark.parametrize("baseline", ["zero", "tensor"])
def test_renorm_is_the_real_ablation_for_the_last_layer(norm, position, baseline):
    """No frozen statistics here: the REAL network, every norm recomputing."""
    model, x = make_model(norm, position), inputs()
    spec = "zero" if baseline == "zero" else 3 * torch.randn(B, 3, 10, dtype=torch.float64)
    direction = torch.randn(B, N_OUT, dtype=torch.float64)
    pred, run = attribute_with_run(model, x, target=direction, mode="renorm", baselines=spec)
    b = torch.zeros_like(run.z) if baseline == "zero" else spec
    actual = ablate_layer(model, x, 2, b, resolve_target(direction, run.logits))
    torch.testing.assert_close(pred[:, 2], actual, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("norm,position", CASES)
def test_renorm_tends_to_live_for_small_changes(norm, position):
    model, x = make_model(norm, position), inputs()
    run = model.run(x)
    step = 1e-6 * torch.randn(run.z.shape, dtype=torch.float64)
    renorm = attribute(model, x, target="logprob", mode="renorm", baselines=run.z + step,
                       labels=torch.tensor([0, 1, 2, 3, 0]))
    live = attribute(model, x, target="logprob", mode="live", baselines=run.z + step,
                     labels=torch.tensor([0, 1, 2, 3, 0]))
    torch.testing.assert_close(renorm / step, live / step, atol=1e-5, rtol=1e-4)


def test_renorm_equals_live_without_norms_and_is_closer_than_live_with_them():
    x = inputs()
    for position in POSITIONS:
        out = attribute_modes(make_model("none", position), x, target="predicted", modes=("live",
                                                                                          "renorm"))
        torch.testing.assert_close(out.predicted["live"], out.predicted["renorm"])
    model = make_model("rms", "post")
    out = attribute_modes(model, x, target="predicted", modes=("live", "renorm"))
    actual = ablate_layer(model, x, 1, torch.zeros_like(out.run.z), out.target)
    err = {m: (p[:, 1] - actual).abs().sum() for m, p in out.predicted.items()}
    assert err["renorm"] < err["live"]


def test_renorm_batched_equals_one_by_one_and_is_not_a_gradient():
    model, x = make_model("layer", "pre"), inputs(n=7)
    whole = attribute(model, x, target="predicted", mode="renorm", memory=1)
    for i in range(7):
        torch.testing.assert_close(whole[i:i + 1], attribute(model, x[i:i + 1], target="predicted",
                                                             mode="renorm"))
    run = model.run(x)
    with pytest.raises(BilensError, match="mode"):
        gradients(model, run, resolve_target("predicted", run.logits), "renorm")


def test_cli_mean_baseline_matches_verify(checkpoint, tmp_path):
    """`attribute --baseline mean` and `verify --baseline mean` use the same reference inputs,
    so the same checkpoint, inputs and target give the same predictions."""
    from bilens.analysis.results import load_results
    from bilens.cli import main

    common = ["--dataset", "synthetic", "--n", "4", "--target", "predicted", "--baseline",
              "mean", "--reference-n", "50"]
    attr = tmp_path / "attr.safetensors"
    assert main(["attribute", str(checkpoint), *common, "--mode", "frozen,live",
                 "--out", str(attr)]) == 0
    assert main(["verify", str(checkpoint), *common, "--modes", "frozen,live", "--no-plots",
                 "--no-progress", "--circuit-ks", "", "--out", str(tmp_path / "v")]) == 0
    a, _ = load_results(attr)
    v, _ = load_results(tmp_path / "v" / "results.safetensors", tmp_path / "v" / "metrics.json")
    for mode in ("frozen", "live"):
        torch.testing.assert_close(a[f"predicted.{mode}"], v[f"predicted.{mode}"])

"""Node attribution from one autograd forward and one backward per mode (issue 14): the held
quantities are the forward's *own* statistics and patterns, detached inside it
(`Intervention.detach_scale` / `detach_pattern`), and the target is resolved on its own
logits. These tests hold that freeze to what SPEC §9 says it is (the clean run's `s` and
patterns held), check that each detach is needed (off, the float64 reference is missed),
and that chunks, the clean run it returns and a single pass per mode are what they claim."""

# ruff: noqa: E741
from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import CASES
from test_sequence import _reference_predicted, rel, tiny_transformer, tokens_for
from torch.testing import assert_close

import bilens.attribution.sequence as sequence
from bilens.attribution.sequence import SEQUENCE_MODES, attribute_sequence, attribute_sequence_modes
from bilens.core.config import ModelConfig
from bilens.core.errors import BilensError
from bilens.core.models.intervention import Intervention
from bilens.core.models.mlp import BilinearNet
from bilens.core.models.transformer import BilinearTransformer, TransformerRun

HELD = {"frozen": ("scale", "pattern"), "frozen-norm": ("scale",), "live": ()}


def _grad_z(model, tokens, iv_kw):
    """`d logit_3 at the last position / d z` `[B, L, T, H]` under an intervention."""
    cfg = model.config
    B, T = tokens.shape
    off = torch.zeros(B, cfg.n_layers, T, cfg.d_hidden, dtype=torch.float64, requires_grad=True)
    out = model.run(tokens, Intervention(z_offset=off, **iv_kw))
    return torch.autograd.grad(out.logits[:, -1, 3].sum(), off)[0]


@pytest.mark.parametrize("norm,position", CASES)
def test_detached_own_statistics_are_the_clean_runs_held(norm, position):
    """SPEC §9 "frozen": every norm statistic and pattern held at its clean value. Detaching
    a run's own `s` / pattern gives the gradient of holding the clean run's, exactly."""
    model = tiny_transformer(norm, position)
    tokens = tokens_for(model, seq=6)
    clean = model.run(tokens)
    live = _grad_z(model, tokens, {})
    for mode, held in HELD.items():
        given = _grad_z(model, tokens, {k: getattr(clean, k) for k in held})
        own = _grad_z(model, tokens, {f"detach_{k}": True for k in held})
        assert_close(own, given, rtol=1e-12, atol=1e-14, msg=mode)
        if held and (norm != "none" or "pattern" in held):   # not vacuous: it is not live
            assert rel(own, live) > 1e-3, mode


@pytest.mark.parametrize("norm,position", CASES)
def test_frozen_is_linear_in_the_last_layer_at_p(norm, position):
    """circuit-tracer's check that a freeze holds: with the run's own statistics and patterns
    detached, the target is linear in the last layer's `z` at `p` (the second derivative there
    is 0); with them live it is not, on a normalized model."""
    model = tiny_transformer(norm, position)
    tokens = tokens_for(model, seq=6)
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(3, cfg.d_hidden, dtype=torch.float64, generator=gen)
    curvature = {}
    for name, hold in (("frozen", dict(detach_scale=True, detach_pattern=True)), ("live", {})):
        off = torch.zeros(3, cfg.n_layers, 6, cfg.d_hidden, dtype=torch.float64,
                          requires_grad=True)
        f = model.run(tokens, Intervention(z_offset=off, **hold)).logits[:, -1, 3].sum()
        g = torch.autograd.grad(f, off, create_graph=True)[0][:, -1, -1]       # [B, H]
        hv = torch.autograd.grad((g * v).sum(), off, allow_unused=True)[0]
        curvature[name] = 0.0 if hv is None else hv[:, -1, -1].abs().max().item()
    assert curvature["frozen"] < 1e-12
    if norm != "none":
        assert curvature["live"] > 1e-6


@pytest.mark.parametrize("norm,position", [("rms", "pre"), ("layer", "pre"), ("rms", "post"),
                                           ("layer", "post")])
def test_each_detach_is_needed(norm, position, monkeypatch):
    """A mutation check: with a detach flag off, the mode's prediction misses the float64
    reference of SPEC §9 (so the reference test would catch a leaking freeze)."""
    model = tiny_transformer(norm, position)
    tokens = tokens_for(model, seq=6)
    want = {m: _reference_predicted(model, tokens, "class:3", None, m)
            for m in ("frozen", "frozen-norm")}
    for mode in want:
        got = attribute_sequence(model, tokens, target="class:3", mode=mode)
        assert rel(got, want[mode]) < 1e-9, mode
    mutants = [("frozen-norm", {}), ("frozen", dict(detach_scale=True)),
               ("frozen", dict(detach_pattern=True))]
    for mode, hold in mutants:
        monkeypatch.setitem(sequence.HOLD, mode, hold)
        got = attribute_sequence(model, tokens, target="class:3", mode=mode)
        assert rel(got, want[mode]) > 1e-3, (mode, hold)
        monkeypatch.undo()


def test_one_autograd_pass_per_mode(monkeypatch):
    """No clean run first: one `run` per mode (`live` and `renorm` share theirs), and no
    logits-only forward; several modes through the explicit backward share one `run`, with
    no autograd graph, and through autograd take one each."""
    model = tiny_transformer("layer", "pre")
    tokens = tokens_for(model, seq=6)
    calls = []
    real = BilinearTransformer.run

    def counted(self, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BilinearTransformer, "run", counted)
    monkeypatch.setattr(BilinearTransformer, "forward", None)
    for mode in SEQUENCE_MODES:
        calls.clear()
        attribute_sequence(model, tokens, target="predicted", mode=mode)
        assert calls == [True], mode
    calls.clear()
    attribute_sequence_modes(model, tokens, target="predicted")
    assert calls == [False]                                  # explicit: one clean run
    calls.clear()
    attribute_sequence_modes(model, tokens, target="predicted", method="autograd")
    assert calls == [True, True, True]                       # frozen, frozen-norm, live+renorm


@pytest.mark.parametrize("target", ["predicted", "next", "mean-logprob"])
def test_chunks_equal_the_whole_batch(target):
    """Batched equals one by one: chunks of one sequence (`memory`) give the whole batch's
    predictions, its target (`predicted` resolved on each chunk's own logits) and its clean
    run, which equals `model.run` field by field."""
    model = tiny_transformer("layer", "pre", n_layers=3)
    tokens = tokens_for(model, n=4, seq=7)
    whole = attribute_sequence_modes(model, tokens, target=target)
    parts = attribute_sequence_modes(model, tokens, target=target, memory=4096)
    assert sequence.batch_for(model, 4, tokens.shape[1] - 1, 4096) == 1
    read = tokens[:, :-1] if target != "predicted" else tokens
    clean = model.run(read)
    for mode in SEQUENCE_MODES:
        assert_close(parts.predicted[mode], whole.predicted[mode], rtol=1e-12, atol=1e-15)
    assert_close(parts.target.to_tensors(), whole.target.to_tensors(), rtol=0, atol=0)
    for f in dataclasses.fields(TransformerRun):
        for att in (whole, parts):
            assert_close(getattr(att.run, f.name), getattr(clean, f.name), rtol=1e-12,
                         atol=1e-15, msg=f.name)
            assert not getattr(att.run, f.name).requires_grad
    if target == "predicted":
        want = clean.logits[:, -1].argmax(-1)
        assert (whole.target.target.direction.argmax(-1) == want).all()


MODE_SETS = [("renorm",), ("live",), ("renorm", "live"), ("frozen", "renorm"),
             ("live", "frozen-norm"), SEQUENCE_MODES]


TOGETHER = [("rms", "pre", m) for m in MODE_SETS] + [
    (norm, pos, SEQUENCE_MODES) for norm in ("none", "rms", "layer") for pos in ("pre", "post")
    if (norm, pos) != ("rms", "pre")]


@pytest.mark.parametrize("method", ["explicit", "autograd"])
@pytest.mark.parametrize("norm,position,modes", TOGETHER,
                         ids=[f"{n}-{p}-{'+'.join(m)}" for n, p, m in TOGETHER])
def test_modes_together_equal_each_alone(norm, position, modes, method):
    """Where the run is not kept, `b - z` is formed in that run's own `z` and the last mode
    computed writes its prediction over it: every mode of a set still equals that mode asked
    for alone with the run kept, and a kept run's `z` is still the clean `z` (every mode
    set on rms pre-norm, all four modes on every other norm x position)."""
    model = tiny_transformer(norm, position, n_layers=3)
    tokens = tokens_for(model, n=3, seq=6)
    clean = model.run(tokens)
    together = attribute_sequence_modes(model, tokens, modes=modes, method=method,
                                        keep_run=False)
    kept = attribute_sequence_modes(model, tokens, modes=modes, method=method)
    assert_close(kept.run.z, clean.z, rtol=0, atol=0)
    for mode in modes:
        alone = attribute_sequence_modes(model, tokens, modes=(mode,), method=method).predicted
        for got in (together.predicted[mode], kept.predicted[mode]):
            assert_close(got, alone[mode], rtol=1e-12, atol=1e-15, msg=mode)
        assert rel(alone[mode], torch.zeros_like(alone[mode])) > 0     # not vacuous


def test_run_keeps_what_a_gradient_needs():
    """`run(intermediates=False)`: the kept fields equal a full run's (attention through
    SDPA when no pattern is asked for), the rest are None."""
    model = tiny_transformer("rms", "pre")
    tokens = tokens_for(model, seq=6)
    full, light = model.run(tokens), model.run(tokens, intermediates=False)
    for f in dataclasses.fields(TransformerRun):
        got = getattr(light, f.name)
        if f.name in ("z", "resid", "scale", "mean", "final"):
            assert_close(got, getattr(full, f.name), rtol=1e-12, atol=1e-14, msg=f.name)
        else:
            assert got is None, f.name


def test_offsets_per_layer_equal_one_tensor():
    """`z_offset` / `norm_offset` as one tensor per layer / norm (`unbind`) act as the whole
    tensor does, and their gradients agree; wrong parts fail in one line."""
    model = tiny_transformer("layer", "post")
    tokens = tokens_for(model, seq=5)
    cfg = model.config
    z = torch.randn(3, cfg.n_layers, 5, cfg.d_hidden, dtype=torch.float64, requires_grad=True)
    n = torch.randn(3, 5, cfg.n_norms, cfg.d_model, dtype=torch.float64, requires_grad=True)
    grads = []
    for iv in (Intervention(z_offset=z, norm_offset=n),
               Intervention(z_offset=z.unbind(1), norm_offset=n.unbind(2))):
        f = model.run(tokens, iv).logits[:, -1, 2].sum()
        grads.append(torch.autograd.grad(f, [z, n]))
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(BilensError, match="expected 2 tensors") as err:
        model.run(tokens, Intervention(z_offset=z.unbind(1)[:1]))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("norm,position", CASES)
def test_tapped_tensors_give_the_offsets_gradients(norm, position):
    """`Intervention.tap` is shown every `z` and every norm output the run uses, once each,
    and the gradients taken at them are those of a zero offset added there (except where
    there is no norm: its output is its input, the residual itself, whose gradient also
    counts the skip path)."""
    model = tiny_transformer(norm, position)
    tokens = tokens_for(model, seq=5)
    cfg = model.config
    seen = {}
    out = model.run(tokens, Intervention(tap=lambda kind, i, t: seen.setdefault((kind, i), t)))
    want = {("z", l) for l in range(cfg.n_layers)} | {("norm", i) for i in range(cfg.n_norms)}
    assert set(seen) == want
    f = out.logits[:, -1, 2].sum()
    tapped = torch.autograd.grad(f, list(seen.values()))
    z = torch.zeros(3, cfg.n_layers, 5, cfg.d_hidden, dtype=torch.float64, requires_grad=True)
    n = torch.zeros(3, 5, cfg.n_norms, cfg.d_model, dtype=torch.float64, requires_grad=True)
    f = model.run(tokens, Intervention(z_offset=z, norm_offset=n)).logits[:, -1, 2].sum()
    g_z, g_n = torch.autograd.grad(f, [z, n])
    for (kind, i), g in zip(seen, tapped, strict=True):
        if kind == "z" or norm != "none":
            assert_close(g, g_z[:, i] if kind == "z" else g_n[:, :, i], rtol=1e-12, atol=1e-14)


def test_autograd_attribution_with_the_weights_held():
    """A model whose weights do not require grad (`requires_grad_(False)`, as a user freezes
    one) still attributes through autograd: the graph starts at the tapped `z`."""
    model = tiny_transformer("rms", "pre")
    tokens = tokens_for(model, seq=6)
    want = attribute_sequence_modes(model, tokens, method="explicit").predicted
    model.requires_grad_(False)
    got = attribute_sequence_modes(model, tokens, method="autograd").predicted
    for mode in SEQUENCE_MODES:
        assert_close(got[mode], want[mode], rtol=1e-9, atol=1e-12, msg=mode)


def test_mlp_family_detaches_its_own_scale():
    """`detach_scale` means the same in §1's network: the gradient of holding the clean `s`."""
    torch.manual_seed(0)
    model = BilinearNet(ModelConfig(d_in=6, d_model=8, d_hidden=12, n_layers=3, n_out=4,
                                    norm="layer", norm_position="pre")).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    clean = model.run(x)
    grads = []
    for kw in (dict(scale=clean.scale), dict(detach_scale=True), {}):
        off = torch.zeros_like(clean.z, requires_grad=True)
        out = model.run(x, Intervention(z_offset=off, **kw))
        grads.append(torch.autograd.grad(out.logits[:, 1].sum(), off)[0])
    assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)
    assert rel(grads[1], grads[2]) > 1e-3


def test_chunks_count_the_logits_where_the_target_reads_them(monkeypatch):
    """A target read at `p` keeps one row of logits per sequence, `mean-logprob` one per
    position: with a vocabulary that dominates the count, a budget of two sequences' worth
    at `p` runs 4 sequences in 2 passes for `next` and in 4 for `mean-logprob`, with the
    whole batch's predictions."""
    from bilens.core.config import TransformerConfig
    from bilens.core.models.transformer import BilinearTransformer

    torch.manual_seed(0)
    model = BilinearTransformer(TransformerConfig(vocab_size=50_000, n_ctx=8, d_model=8,
                                                  d_hidden=5, n_layers=2, n_heads=2)).double()
    seq = 7
    cfg = model.config
    acts = 3 * seq * cfg.n_layers * (12 * cfg.d_model + 6 * cfg.d_hidden + 3 * cfg.n_heads * seq)
    at_p, every = acts + 9 * cfg.vocab_size, acts + 9 * cfg.vocab_size * seq   # values / seq
    memory = 2 * at_p * 8                                                        # float64 bytes
    assert every > memory // 8                                  # mean-logprob: one per chunk
    tokens = tokens_for(model, n=4, seq=seq)
    passes = []
    real = BilinearTransformer.run

    def counted(self, *args, **kwargs):
        passes.append(args[0].shape[0])                         # sequences in this pass
        return real(self, *args, **kwargs)

    for target, want in (("next", [2, 2]), ("mean-logprob", [1, 1, 1, 1])):
        whole = attribute_sequence(model, tokens, target=target, mode="live")
        monkeypatch.setattr(BilinearTransformer, "run", counted)
        passes.clear()
        parts = attribute_sequence(model, tokens, target=target, mode="live", memory=memory)
        monkeypatch.undo()
        assert passes == want, target
        assert_close(parts, whole, rtol=1e-12, atol=1e-15)

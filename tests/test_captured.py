"""`CapturedAttribution` (a CUDA graph of one attribution call) on the CPU: what a replay
reads must be exactly what each call refills. A stand-in graph reruns the recorded call on
the captured inputs and writes its result where the capture's lies, as a replay does, so
an input left stale (the next tokens, the positions) gives the previous batch's answer
here as it would on a GPU. The real capture is tested on CUDA in test_sequence_precision."""

from __future__ import annotations

import pytest
import torch
from test_sequence import tiny_transformer, tokens_for
from torch.testing import assert_close

import bilens.attribution.captured as captured
from bilens.attribution import CapturedAttribution
from bilens.attribution.sequence import attribute_sequence
from bilens.core.errors import BilensError


class _Replayed:
    """A stand-in for `torch.cuda.CUDAGraph`: `replay` reruns the call and writes in place."""

    def __init__(self, fn, out):
        self.fn, self.out, self.replays = fn, out, 0

    def replay(self):
        self.out.copy_(self.fn())
        self.replays += 1


@pytest.fixture
def on_cpu(monkeypatch):
    """Captures recorded by `_Replayed`, and CPU models accepted."""
    def fake(fn, device, warmup=2, what="", instead=""):
        for _ in range(warmup):
            fn()
        out = fn()
        return _Replayed(fn, out), out
    monkeypatch.setattr(captured, "capture", fake)
    monkeypatch.setattr(captured, "_check_model", lambda model: None)


@pytest.mark.parametrize("target,mode", [("next", "renorm"), ("predicted", "live"),
                                         ("diff:1,2", "frozen"), ("mean-logprob", "renorm")])
def test_each_call_equals_attribute_sequence(on_cpu, target, mode):
    """Batch after batch (new tokens, new next tokens, new positions where the target takes
    one), the replay equals `attribute_sequence` on that batch, and each call returns a new
    tensor."""
    model = tiny_transformer("layer", "pre", n_layers=3)
    first = tokens_for(model, n=3, seq=7, seed=0)
    kept = first.clone()
    att = CapturedAttribution(model, first, target=target, mode=mode)
    every = target == "mean-logprob"
    outs = []
    for seed, position in ((1, None), (2, torch.tensor([2, 5, 4])), (0, -2)):
        tokens = tokens_for(model, n=3, seq=7, seed=seed)
        pos = None if every else position
        want = attribute_sequence(model, tokens, target=target, mode=mode, position=pos)
        got = att(tokens, position=pos)
        assert_close(got, want, rtol=1e-12, atol=1e-15)
        assert torch.equal(first, kept), "a later batch was written into the first's tokens"
        outs.append(got)
    assert att._graph.replays == 3
    assert outs[0].data_ptr() != outs[1].data_ptr() != att._out.data_ptr()
    assert (outs[0] - outs[1]).abs().max() > 0                      # not vacuous


def test_baselines_are_resolved_once(on_cpu):
    """`"mean"` over `reference` is resolved at capture and held: later calls equal
    `attribute_sequence` with the same reference."""
    model = tiny_transformer("rms", "pre")
    reference = tokens_for(model, n=4, seq=6, seed=3)[:, :-1]
    att = CapturedAttribution(model, tokens_for(model, seed=0), target="next",
                              baselines="mean", reference=reference)
    tokens = tokens_for(model, seed=1)
    want = attribute_sequence(model, tokens, target="next", baselines="mean",
                              reference=reference)
    assert_close(att(tokens), want, rtol=1e-12, atol=1e-15)


def test_another_shape_is_one_line(on_cpu):
    model = tiny_transformer("rms", "pre")
    att = CapturedAttribution(model, tokens_for(model, n=3, seq=6), target="next")
    assert att.shape == (3, 5)
    for bad in (tokens_for(model, n=2, seq=6), tokens_for(model, n=3, seq=5)):
        with pytest.raises(BilensError, match="capture another for that shape") as err:
            att(bad)
        assert "\n" not in str(err.value)


def test_needs_a_cuda_model():
    """On a CPU (the real check), one line naming what to call instead."""
    model = tiny_transformer("rms", "pre")
    with pytest.raises(BilensError, match="CUDA device.*call attribute_sequence") as err:
        CapturedAttribution(model, tokens_for(model), target="next")
    assert "\n" not in str(err.value)


def test_labels_given_or_not_as_at_capture(on_cpu):
    """Next tokens given as labels at capture and left out of a call (or the other way
    round): one line that says so, not a shape error from deeper down."""
    model = tiny_transformer("rms", "pre")
    full = tokens_for(model, n=3, seq=7)
    tokens, labels = full[:, :-1], full[:, 1:]
    with_labels = CapturedAttribution(model, tokens, target="next", labels=labels)
    new_labels = labels.roll(1, 0)
    assert_close(with_labels(tokens, labels=new_labels),
                 attribute_sequence(model, tokens, target="next", labels=new_labels),
                 rtol=1e-12, atol=1e-15)
    without = CapturedAttribution(model, tokens, target="predicted")
    for att, kwargs, had in ((with_labels, {}, "with"),
                             (without, {"labels": labels}, "without")):
        with pytest.raises(BilensError, match=f"captured {had} labels") as err:
            att(tokens, **kwargs)
        assert "\n" not in str(err.value)


def test_an_mlp_network_is_named_as_such():
    from test_ablation import make
    with pytest.raises(BilensError, match="got a BilinearNet; for an MLP network call "
                                          "attribute$"):
        CapturedAttribution(make(), torch.zeros(2, 4, dtype=torch.long))

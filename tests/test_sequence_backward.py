"""The transformer's written-out backward (`attribution.sequence_backward`) against autograd.

`method="autograd"` is held to the per-position float64 reference of SPEC §9 by
`test_sequence.py` (single modes; `attribute_sequence_modes` there runs the explicit
backward); here the explicit backward equals autograd to 1e-10 in float64 for every norm x
position, every target kind and every mode (`attn_scale` 0.7, rotary base 50), and `"auto"`
picks as documented."""

from __future__ import annotations

import pytest
import torch
from conftest import CASES
from test_sequence import rel, tiny_transformer, tokens_for

import bilens.attribution.sequence as sequence
from bilens.attribution.sequence import SEQUENCE_MODES, attribute_sequence, attribute_sequence_modes
from bilens.core.errors import BilensError

TARGETS = [("next", None), ("mean-logprob", None), ("predicted", [3, 5, 4]),
           ("diff:1,2", [5, 2, 5]), ("class:4", None)]


@pytest.mark.parametrize("target,position", TARGETS)
@pytest.mark.parametrize("norm,position_kind", CASES)
def test_explicit_backward_equals_autograd(norm, position_kind, target, position):
    model = tiny_transformer(norm, position_kind)
    tokens = tokens_for(model, n=3, seq=7)
    if target not in ("next", "mean-logprob"):
        tokens = tokens[:, :-1]                       # no next token is read
    kw = dict(target=target, position=None if position is None else torch.tensor(position))
    want = attribute_sequence_modes(model, tokens, method="autograd", **kw)
    got = attribute_sequence_modes(model, tokens, method="explicit", **kw)
    for mode in SEQUENCE_MODES:
        assert rel(got.predicted[mode], want.predicted[mode]) < 1e-10, mode
    assert torch.equal(got.target.position, want.target.position)
    assert rel(got.run.logits, want.run.logits) < 1e-12     # the clean run it returns


def test_auto_takes_explicit_for_several_graphs_and_autograd_for_one(monkeypatch):
    """`"auto"`: one graph (a single mode, or `live` + `renorm`, which share it) through
    autograd; several through the explicit backward, whose clean forward they share."""
    model = tiny_transformer()
    tokens = tokens_for(model)
    ran = []
    real_auto, real_exp = sequence._one_pass, sequence.gradients_explicit
    monkeypatch.setattr(sequence, "_one_pass",
                        lambda *a, **k: ran.append("autograd") or real_auto(*a, **k))
    monkeypatch.setattr(sequence, "gradients_explicit",
                        lambda *a, **k: ran.append("explicit") or real_exp(*a, **k))
    attribute_sequence(model, tokens, target="next", mode="renorm")
    attribute_sequence_modes(model, tokens, target="next", modes=("live", "renorm"))
    assert ran == ["autograd", "autograd"]
    ran.clear()
    attribute_sequence_modes(model, tokens, target="next", modes=("frozen", "live"))
    assert ran == ["explicit", "explicit"]                       # one backward per graph
    with pytest.raises(BilensError, match="method: expected one of"):
        attribute_sequence(model, tokens, target="next", method="jvp")

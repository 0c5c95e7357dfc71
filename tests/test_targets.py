"""Targets (SPEC §2, §8): every spec resolves to the right `f`, and attribution follows it."""

from __future__ import annotations

import pytest
import torch

from bilens.attribution.backward import gradients_autograd
from bilens.attribution.predict import attribute
from bilens.core.config import ModelConfig
from bilens.core.errors import BilensError
from bilens.core.models.mlp import BilinearNet
from bilens.core.targets import Target, resolve_target

torch.set_num_threads(1)

B, N_OUT = 4, 5
LOGITS = torch.tensor([[0.0, 3.0, 1.0, -1.0, 2.0],
                       [4.0, 0.0, 1.0, 1.0, 0.0],
                       [0.0, 0.0, 0.0, 5.0, 1.0],
                       [1.0, 2.0, 9.0, 0.0, 0.0]], dtype=torch.float64)
LABELS = torch.tensor([4, 0, 2, 1])


def onehot(classes):
    return torch.nn.functional.one_hot(torch.as_tensor(classes), N_OUT).double()


@pytest.mark.parametrize("spec,expected", [
    ("predicted", onehot([1, 0, 3, 2])),
    ("label", onehot(LABELS)),
    ("class:3", onehot([3] * B)),
    ("3", onehot([3] * B)),
    (3, onehot([3] * B)),
    ("diff:1,4", onehot([1] * B) - onehot([4] * B)),
    (torch.tensor([0, 1, 2, 3]), onehot([0, 1, 2, 3])),
    ([4, 4, 0, 0], onehot([4, 4, 0, 0])),
    (torch.arange(5.0), torch.arange(5.0).double().expand(B, 5)),   # cast to the logits'
    (torch.ones(B, 5), torch.ones(B, 5).double()),                  # dtype
])
def test_linear_specs_resolve_to_directions(spec, expected):
    target = resolve_target(spec, LOGITS, LABELS)
    assert target.is_linear
    torch.testing.assert_close(target.direction, expected)
    torch.testing.assert_close(target(LOGITS), (LOGITS * expected).sum(-1))
    torch.testing.assert_close(target.grad_logits(LOGITS), expected)


def test_margin_is_top1_minus_top2_fixed_on_the_clean_run():
    """`margin`: the clean run's largest logit minus its second largest (written out by
    hand for each row), and it stays those two classes when the logits change."""
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0, 2.0],      # top-1 class 1, top-2 class 4
                           [4.0, 0.0, 1.5, 1.0, 0.0],       # 0, 2
                           [0.0, 0.0, 0.5, 5.0, 1.0],       # 3, 4
                           [1.0, 2.0, 9.0, 0.0, 0.0]],      # 2, 1
                          dtype=torch.float64)
    target = resolve_target("margin", logits)
    torch.testing.assert_close(target.direction, onehot([1, 0, 3, 2]) - onehot([4, 2, 4, 1]))
    torch.testing.assert_close(target(logits), torch.tensor([1.0, 2.5, 4.0, 7.0],
                                                            dtype=torch.float64))
    moved = logits.clone()
    moved[0, 4] = 10.0                                      # class 4 now leads: still 1 - 4
    assert target(moved)[0].item() == pytest.approx(3.0 - 10.0)
    with pytest.raises(BilensError, match="at least 2 outputs"):
        resolve_target("margin", torch.zeros(2, 1))


def test_logprob_is_the_label_log_probability():
    target = resolve_target("logprob", LOGITS, LABELS)
    assert not target.is_linear
    expected = LOGITS.log_softmax(-1)[torch.arange(B), LABELS]
    torch.testing.assert_close(target(LOGITS), expected)
    logits = LOGITS.clone().requires_grad_()
    (grad,) = torch.autograd.grad(target(logits).sum(), logits)
    torch.testing.assert_close(target.grad_logits(LOGITS), grad)
    assert set(target.to_tensors()) == {"label"}


def test_target_broadcasts_over_extra_axes_and_selects():
    target = resolve_target("diff:0,1", LOGITS)
    stacked = LOGITS[:, None].expand(B, 3, N_OUT)
    torch.testing.assert_close(target(stacked), target(LOGITS)[:, None].expand(B, 3))
    torch.testing.assert_close(target.select(slice(1, 3)).direction, target.direction[1:3])
    assert set(target.to_tensors()) == {"target"}


@pytest.mark.parametrize("spec,labels,message", [
    ("class:5", None, "out of range"),
    ("class:-1", None, "out of range"),
    ("class:x", None, "integer class"),
    ("diff:1", None, "two classes"),
    ("diff:1,9", None, "out of range"),
    (7, None, "out of range"),
    (True, None, "bool"),
    (torch.tensor([0, 1, 2]), None, "one class per input"),
    (torch.tensor([0, 1, 2, 5]), None, "out of range"),
    (torch.ones(4), None, "direction must have shape"),
    (torch.ones(B, 6), None, "direction must have shape"),
    (torch.tensor([0.0, float("nan"), 0, 0, 0]), None, "NaN"),
    ("label", None, "needs the true labels"),
    ("logprob", torch.tensor([0, 1]), "one per input"),
    ("logprob", torch.tensor([0, 1, 2, 7]), "0..4"),
    ("best", None, "unknown spec"),
    (1.5, None, "cannot use"),
])
def test_bad_specs_raise_clear_errors(spec, labels, message):
    with pytest.raises(BilensError, match=message):
        resolve_target(spec, LOGITS, labels)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(d_in=6, d_model=8, d_hidden=10, n_layers=2, n_out=N_OUT, norm="rms")
    net = BilinearNet(cfg).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


@pytest.fixture(scope="module")
def x():
    return torch.randn(B, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("mode", ["frozen", "live"])
def test_attribution_is_linear_in_the_target_direction(model, x, mode):
    """Equivalent specs give identical attributions; a difference target is a difference."""
    def attr(spec, **kw):
        return attribute(model, x, target=spec, mode=mode, **kw)

    pred = model(x).argmax(-1)
    torch.testing.assert_close(attr("predicted"), attr(pred))
    torch.testing.assert_close(attr("label", labels=LABELS), attr(LABELS))
    torch.testing.assert_close(attr("class:2"), attr(2))
    torch.testing.assert_close(attr("class:2"), attr(torch.full((B,), 2)))
    torch.testing.assert_close(attr("class:2"), attr(onehot([2] * B)))
    torch.testing.assert_close(attr("diff:2,4"), attr(2) - attr(4))
    u = torch.randn(N_OUT, dtype=torch.float64)
    combo = sum(u[c] * attr(c) for c in range(N_OUT))
    torch.testing.assert_close(attr(u), combo)
    torch.testing.assert_close(attr(u.expand(B, N_OUT)), combo)
    resolved = resolve_target("diff:2,4", model(x))
    torch.testing.assert_close(attr(resolved), attr("diff:2,4"))


def test_logprob_attribution_is_its_gradient(model, x):
    """logprob = logit_y - logsumexp: its gradient mixes the classes by the softmax."""
    run = model.run(x)
    target = resolve_target("logprob", run.logits, LABELS)
    g, _ = gradients_autograd(model, x, target, "live")
    torch.testing.assert_close(attribute(model, x, target="logprob", mode="live", labels=LABELS),
                               -run.z * g)
    direction = target.grad_logits(run.logits)               # d logprob / d logits, per input
    torch.testing.assert_close(attribute(model, x, target=direction, mode="live"), -run.z * g)


def test_per_input_targets_are_per_input(model, x):
    classes = torch.tensor([0, 3, 1, 4])
    whole = attribute(model, x, target=classes, mode="frozen", memory=1)      # one per chunk
    for i in range(B):
        one = attribute(model, x[i:i + 1], target=int(classes[i]), mode="frozen")
        torch.testing.assert_close(whole[i], one[0])


def test_a_resolved_target_passes_through():
    t = Target(direction=onehot([1, 1, 1, 1]), spec="mine")
    assert resolve_target(t, LOGITS) is t


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_a_resolved_target_follows_the_models_device(model, x):
    """A Target resolved on CPU logits works with a model on the GPU (as a CPU direction
    tensor or CPU labels do)."""
    from bilens.ablation import ablation_effects

    for spec in ("predicted", "logprob"):
        tgt = resolve_target(spec, model(x), LABELS[: x.shape[0]] % model.config.n_out)
        gpu = model.cuda()
        try:
            p = attribute(gpu, x, target=tgt, mode="live").cpu()
            a = ablation_effects(gpu, x, target=tgt).cpu()
        finally:
            model.cpu()
        torch.testing.assert_close(p, attribute(model, x, target=tgt, mode="live"))
        torch.testing.assert_close(a, ablation_effects(model, x, target=tgt))

"""Node attribution and the exact oracle of the bilinear transformer (SPEC §9) against slow
float64 references written from the SPEC (`reference_sequence.forward_seq`), every norm x
position, `attn_scale` != 1, targets read at different positions per sequence."""

# ruff: noqa: E741
from __future__ import annotations

import itertools

import pytest
import torch
from conftest import CASES
from reference_sequence import forward_seq, target_value
from torch.testing import assert_close

from bilens.ablation.reference_sequence import sequence_ablation_effects_loop
from bilens.ablation.sequence import sequence_ablation_effects
from bilens.attribution.sequence import SEQUENCE_MODES, attribute_sequence, attribute_sequence_modes
from bilens.core.config import TransformerConfig
from bilens.core.errors import BilensError
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.sequence import prepare_sequence

FLAGS = list(itertools.product((False, True), (False, True)))      # (frozen_norm, frozen_attn)
TARGETS = [("next", [2, 4, 1]), ("class:3", None), ("mean-logprob", None)]


def tiny_transformer(norm="rms", position="pre", seed=0, n_layers=2, **sizes):
    """A small random float64 transformer with non-trivial gains, biases and attention."""
    shape = {**dict(vocab_size=9, n_ctx=8, d_model=8, d_hidden=5, n_heads=2), **sizes}
    cfg = TransformerConfig(**shape, n_layers=n_layers, norm=norm, norm_position=position,
                            attn_scale=0.7, rope_base=50.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BilinearTransformer(cfg).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.rand(p.shape, generator=gen, dtype=p.dtype))
            elif name.endswith("norm.bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            elif ".attn.q" in name or ".attn.k" in name:
                p.mul_(2.0)                              # patterns far from uniform
    return model.eval()


def tokens_for(model, n=3, seq=6, seed=0):
    g = torch.Generator().manual_seed(10 + seed)
    return torch.randint(model.config.vocab_size, (n, seq), generator=g)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _prepared(model, tokens, target, position):
    pos = None if position is None else torch.tensor(position)
    return (pos, *prepare_sequence(model, tokens, target, pos, "zero", None, None))


def _reference_predicted(model, tokens, target, position, mode):
    """`(b - z) * d f / d z` per sequence by autograd through `forward_seq`, the frozen
    statistics and patterns of its own clean run passed back detached; `renorm` as its
    definition says, from the reference's own norm-output gradients."""
    cfg, sd = model.config.to_dict(), model.state_dict()
    read, nxt = (tokens[:, :-1], tokens[:, 1:]) if target in ("next", "mean-logprob") else (
        tokens, None)
    out = []
    for i, seq in enumerate(read.tolist()):
        T = len(seq)
        p = T - 1 if position is None else position[i]
        n = None if nxt is None else nxt[i].tolist()
        _, z, stats, pats = forward_seq(sd, cfg, seq)
        held = {"frozen": dict(frozen_s={k: v.detach() for k, v in stats.items()},
                               frozen_p={k: v.detach() for k, v in pats.items()}),
                "frozen-norm": dict(frozen_s={k: v.detach() for k, v in stats.items()})
                }.get(mode, {})
        off = torch.zeros_like(z, requires_grad=True)
        names = list(stats)
        n_off = {k: torch.zeros(cfg["d_model"], dtype=torch.float64, requires_grad=True)
                 for k in names}
        logits = forward_seq(sd, cfg, seq, z_offset=off, norm_offset=n_off, **held)[0]
        grads = torch.autograd.grad(target_value(logits, target, p, n), [off, *n_off.values()],
                                    allow_unused=True)
        g = grads[0]
        pred = -z * g
        if mode == "renorm":
            g_norm = {k: (torch.zeros(cfg["d_model"], dtype=torch.float64) if v is None else v)
                      for k, v in zip(names, grads[1:], strict=True)}
            pred = _reference_renorm(sd, cfg, seq, z, g, g_norm)
        out.append(torch.where(torch.arange(T)[:, None] <= p, pred, torch.zeros_like(pred)))
    return torch.stack(out)


def _reference_renorm(sd, cfg, seq, z, g, g_norm):
    """SPEC-level renorm: the first norm the ablation reaches at `t`, exactly; the rest live."""
    from reference_sequence import _norm

    L, T, H = z.shape
    pre = cfg["norm_position"] == "pre"
    # the residual each norm normalizes, from a clean run that records it
    resid = {}
    forward_seq(sd, cfg, seq, record=resid)
    pred = torch.zeros_like(z)
    for l, t, k in itertools.product(range(L), range(T), range(H)):
        c = -z[l, t, k]
        D_k = sd[f"layers.{l}.D"][:, k].double()
        name = (f"layers.{l}.mlp_norm" if not pre else
                f"layers.{l + 1}.attn_norm" if l + 1 < L else "final_norm")
        r = resid[(name, t)]
        gamma, beta = sd.get(f"{name}.weight"), sd.get(f"{name}.bias")
        gamma = None if gamma is None else gamma.double()
        beta = None if beta is None else beta.double()

        def n_of(x, gamma=gamma, beta=beta):
            return _norm(cfg["norm"], x, gamma, beta, cfg["eps"])[0]

        exact = g_norm[(name, t)] @ (n_of(r + c * D_k) - n_of(r))
        if not pre:
            pred[l, t, k] = exact
            continue
        slope = torch.autograd.functional.jvp(n_of, r, D_k)[1] @ g_norm[(name, t)]
        pred[l, t, k] = c * g[l, t, k] - c * slope + exact
    return pred


@pytest.mark.parametrize("target,position", TARGETS)
@pytest.mark.parametrize("norm,position_kind", CASES)
def test_attribution_equals_reference(norm, position_kind, target, position):
    model = tiny_transformer(norm, position_kind)
    tokens = tokens_for(model, seq=6)
    pos = None if position is None else torch.tensor(position)
    got = attribute_sequence_modes(model, tokens, target=target, position=pos).predicted
    for mode in SEQUENCE_MODES:
        want = _reference_predicted(model, tokens, target, position, mode)
        assert rel(got[mode], want) < 1e-6, mode
        assert_close(got[mode], want, rtol=1e-6, atol=1e-9, msg=mode)


@pytest.mark.parametrize("target,position", TARGETS)
@pytest.mark.parametrize("norm,position_kind", CASES)
def test_oracle_equals_per_node_rerun(norm, position_kind, target, position):
    """Every flag: the perturbation oracle equals one rerun of the network per node."""
    model = tiny_transformer(norm, position_kind, n_layers=3)
    tokens = tokens_for(model, seq=6)
    pos, read, run, tgt, b = _prepared(model, tokens, target, position)
    for fn, fa in FLAGS:
        got = sequence_ablation_effects(model, tokens, target=target, position=pos,
                                        frozen_norm=fn, frozen_attn=fa)
        want = sequence_ablation_effects_loop(model, read, run, tgt, b, frozen_norm=fn,
                                              frozen_attn=fa)
        assert rel(got, want) < 1e-6, (fn, fa)
        assert_close(got, want, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("norm,position_kind", CASES)
def test_oracle_equals_literal_reference(norm, position_kind):
    """Some nodes of every layer and position, ablated in `forward_seq` (statistics and
    patterns held from its own clean run as the flags say)."""
    model = tiny_transformer(norm, position_kind)
    tokens = tokens_for(model, n=2, seq=5)
    cfg, sd = model.config.to_dict(), model.state_dict()
    got = {f: sequence_ablation_effects(model, tokens, target="class:3", frozen_norm=f[0],
                                        frozen_attn=f[1]) for f in FLAGS}
    for i, seq in enumerate(tokens.tolist()):
        logits, z, stats, pats = forward_seq(sd, cfg, seq)
        f0 = target_value(logits, "class:3", 4, None)
        for l, t in itertools.product(range(2), range(5)):
            k = (3 * l + t + i) % model.config.d_hidden
            for fn, fa in FLAGS:
                held = dict(frozen_s=stats if fn else None, frozen_p=pats if fa else None)
                out = forward_seq(sd, cfg, seq, ablate=[(l, t, k, 0.0)], **held)[0]
                want = target_value(out, "class:3", 4, None) - f0
                assert abs(got[(fn, fa)][i, l, t, k].item() - want.item()) <= (
                    1e-6 * abs(want.item()) + 1e-11), (l, t, k, fn, fa)


@pytest.mark.parametrize("norm,position_kind", CASES)
def test_nothing_after_the_target_position(norm, position_kind):
    model = tiny_transformer(norm, position_kind)
    tokens = tokens_for(model, seq=7)
    pos = torch.tensor([1, 3, 5])
    att = attribute_sequence_modes(model, tokens, target="next", position=pos).predicted
    actual = sequence_ablation_effects(model, tokens, target="next", position=pos)
    after = torch.arange(6)[None, :] > pos[:, None]                        # [B, T]
    for p in (*att.values(), actual):
        assert (p.permute(0, 2, 1, 3)[after] == 0).all()
        assert (p.permute(0, 2, 1, 3)[~after] != 0).any()


@pytest.mark.parametrize("norm,position_kind", CASES)
def test_last_layer_at_p_exact(norm, position_kind):
    """`frozen` is exact for the last layer's nodes at `p` against the frozen-both ablation
    (everything after them is linear then); `renorm` against the real ablation."""
    model = tiny_transformer(norm, position_kind)
    tokens = tokens_for(model, seq=6)
    pos = torch.tensor([2, 5, 4])
    u = torch.randn(model.config.vocab_size, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    att = attribute_sequence_modes(model, tokens, target=u, position=pos,
                                   modes=("frozen", "renorm")).predicted
    both = sequence_ablation_effects(model, tokens, target=u, position=pos, frozen_norm=True,
                                     frozen_attn=True)
    real = sequence_ablation_effects(model, tokens, target=u, position=pos)
    rows = torch.arange(3)
    assert_close(att["frozen"][rows, -1, pos], both[rows, -1, pos], rtol=1e-9, atol=1e-12)
    assert_close(att["renorm"][rows, -1, pos], real[rows, -1, pos], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("position_kind", ["pre", "post"])
def test_no_norm_frozen_norm_is_live(position_kind):
    model = tiny_transformer("none", position_kind)
    att = attribute_sequence_modes(model, tokens_for(model), target="next",
                                   modes=("frozen-norm", "live", "renorm")).predicted
    assert_close(att["frozen-norm"], att["live"], rtol=1e-12, atol=1e-14)
    assert_close(att["renorm"], att["live"], rtol=1e-12, atol=1e-14)


def test_batched_equals_one_by_one():
    model = tiny_transformer("layer", "pre", n_layers=3)
    tokens = tokens_for(model, n=4, seq=7)
    pos = torch.tensor([5, 2, 4, 3])
    kw = dict(target="next", position=pos)
    whole = attribute_sequence_modes(model, tokens, **kw).predicted
    actual = sequence_ablation_effects(model, tokens, **kw)
    tiny = sequence_ablation_effects(model, tokens, memory=4096, **kw)   # one channel a batch
    assert_close(tiny, actual, rtol=1e-12, atol=1e-15)
    for i in range(4):
        one = dict(target="next", position=pos[i : i + 1])
        parts = attribute_sequence_modes(model, tokens[i : i + 1], **one).predicted
        for mode in SEQUENCE_MODES:
            assert_close(parts[mode], whole[mode][i : i + 1], rtol=1e-10, atol=1e-14)
        assert_close(sequence_ablation_effects(model, tokens[i : i + 1], **one),
                     actual[i : i + 1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("grow", [False, True])
def test_batches_grow_as_the_suffix_shrinks(monkeypatch, grow):
    """A budget of 3 channels when every position is carried runs them 3 + 2 at a time;
    with `grow_batches`, whole rows 2 at a time where one position is carried (the last
    layer, and every layer at the last position): the batches follow `T - t`, and either
    way the effects equal one batch's."""
    from bilens.ablation._engine.sequence_plan import SequencePlan
    from bilens.ablation.sequence import ablate_prepared

    model = tiny_transformer("rms", "pre", n_layers=3)
    tokens = tokens_for(model, n=4, seq=8)                 # `next` reads 7 positions
    whole = sequence_ablation_effects(model, tokens, target="next")
    cfg, sizes = model.config, set()
    per_pair = 7 * (14 * cfg.d_model + 4 * cfg.d_hidden + 4 * cfg.n_heads * 7) + 27  # S = T
    real = SequencePlan.effects

    def counted(self, l, t, rows, ks):
        sizes.add((l, t, rows.stop - rows.start, ks.stop - ks.start))
        return real(self, l, t, rows, ks)

    monkeypatch.setattr(SequencePlan, "effects", counted)
    _, run, tgt, b = prepare_sequence(model, tokens, "next", None, "zero", None, None)
    parts = ablate_prepared(model, run, tgt, b, frozen_norm=False, frozen_attn=False,
                            layers=[0, 1, 2], memory=3 * per_pair * 8, progress=False,
                            grow_batches=grow)
    assert (0, 0, 1, 3) in sizes and (0, 0, 1, 2) in sizes
    late = {(1, 6, 2, 5), (2, 6, 2, 5)}
    assert late <= sizes if grow else not late & sizes
    assert_close(parts, whole, rtol=1e-12, atol=1e-15)


def test_even_split_takes_the_fewest_parts_within_the_bound():
    """`_even(n, most)`: parts of at most `most`, as few as `most` allows, the last smaller
    than the others by less than the number of parts; 1 for an empty split."""
    from bilens.ablation.sequence import _even

    assert _even(0, 5) == 1 and _even(128, 37) == 32 and _even(128, 43) == 43
    for n in range(1, 120):
        for most in range(1, 40):
            part = _even(n, most)
            parts = -(-n // part)
            last = n - (parts - 1) * part
            assert 1 <= part <= most and parts == -(-n // most), (n, most)
            assert 0 < last <= part and part - last < parts, (n, most)


def test_baselines_mean_and_tensor():
    model = tiny_transformer("rms", "post")
    tokens = tokens_for(model)
    reference = tokens_for(model, n=5, seed=4)
    _, read, run, tgt, b = _prepared(model, tokens, "class:1", None)
    mean = model.run(reference).z.mean((0, 2))                             # [L, H]
    for spec in ("mean", mean):
        p = attribute_sequence(model, tokens, target="class:1", baselines=spec,
                               reference=reference, mode="live")
        a = sequence_ablation_effects(model, tokens, target="class:1", baselines=spec,
                                      reference=reference)
        b = mean[None, :, None].expand_as(run.z)
        want = sequence_ablation_effects_loop(model, read, run, tgt, b)
        assert_close(a, want, rtol=1e-8, atol=1e-12)
        assert p.shape == a.shape


@pytest.mark.parametrize("call,match", [
    (lambda m, x: attribute_sequence(m, x, position=9), "beyond the sequence"),
    (lambda m, x: sequence_ablation_effects(m, x, position=-9), "beyond the sequence"),
    (lambda m, x: attribute_sequence(m, torch.zeros(2, 12, dtype=torch.long)), "n_ctx"),
    (lambda m, x: sequence_ablation_effects(m, torch.zeros(2, 12, dtype=torch.long)), "n_ctx"),
    (lambda m, x: attribute_sequence(m, x, mode="exact"), "sequence-model attribution mode"),
    (lambda m, x: attribute_sequence(m, x, target="logprob"), "next"),
    (lambda m, x: attribute_sequence(m, x, target="mean-logprob", position=2), "every position"),
    (lambda m, x: sequence_ablation_effects(m, x, layers=[5]), "layers"),
])
def test_bad_input_one_line(call, match):
    model = tiny_transformer()
    with pytest.raises(BilensError, match=match) as err:
        call(model, tokens_for(model))
    assert "\n" not in str(err.value)

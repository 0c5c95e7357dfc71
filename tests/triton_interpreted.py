"""The Triton GEMMs (`bilens.ablation._engine.triton_ops`) on the CPU, under Triton's
interpreter, against float64: the index arithmetic, masks, strides and the float16 scaling
of every kernel, and the whole Triton suffix of `Plan.effects` end to end.

Not collected by the main suite (the name has no `test_` prefix): `TRITON_INTERPRET=1` must
be set before Triton is first imported, so `tests/test_triton_ops.py` runs this file in a
fresh `python -m pytest` with that variable set. Shapes are tiny and not multiples of any
tile, so every mask is exercised; one autotune shape per kernel is used (the interpreter
cannot time shapes).
"""

# ruff: noqa: E741  (`l` is SPEC's layer index)
from __future__ import annotations

import os
import warnings

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":       # pragma: no cover (a misuse, not a test)
    raise RuntimeError("run this file with TRITON_INTERPRET=1 (see tests/test_triton_ops.py)")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from test_ablation import make  # noqa: E402

from bilens.ablation import ablation_effects_loop  # noqa: E402
from bilens.ablation._engine import triton_ops as T  # noqa: E402
from bilens.ablation._engine.plan import Plan  # noqa: E402
from bilens.ablation._engine.triton_attention import _p_expm1  # noqa: E402
from bilens.ablation.reference import prepare  # noqa: E402

TOL = 1e-5                   # normwise, as `bilens bench` and the GPU tests hold them
# entry_down with float16 halves: a masked-out row (no ablation) has a zero bound, so its
# scale is 2^120 and `1 / (z_scale * d_scale)` overflows to inf and gives 0, in a row that
# is never stored. numpy warns; the results below would show any overflow that mattered.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")


def rand(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def error(got, ref):
    got, ref = got.double(), ref.double()
    return ((got - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("inner", [1, 3], ids=["rows-i-k", "rows-i-k-s"])
@pytest.mark.parametrize("f16", [False, True], ids=["3xtf32", "3xfp16"])
def test_lr_dz(f16, inner):
    """`inner > 1`: each ablation's rows run over `inner` inputs (a sequence's positions),
    whose clean `a`, `b` differ: row `(i * per_input + k) * inner + s` reads input
    `i * inner + s`."""
    n, per_input, d, H = 3, 5, 10, 21
    rows = rand(n * per_input * inner, d, seed=0)
    L, R = rand(H, d, seed=1), rand(H, d, seed=2)
    clean = rand(n * inner, 4, H, seed=3)                   # like run.left: a strided view
    a, b = clean[:, 1], clean[:, 2]
    dz, zmax = T.lr_dz(rows, T.split_weight(L, f16), T.split_weight(R, f16), a, b, per_input,
                       inner=inner)
    i = torch.tensor([i * inner + s for i in range(n) for _ in range(per_input)
                      for s in range(inner)])                # each row's input, in row order
    dl, dr = rows.double() @ L.double().T, rows.double() @ R.double().T
    ref = a.double()[i] * dr + dl * (b.double()[i] + dr)
    assert error(dz, ref) < TOL
    if f16:
        assert zmax.item() == pytest.approx(dz.abs().max().item(), rel=1e-6)
    else:
        assert zmax is None


@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("f16", [False, True], ids=["3xtf32", "3xfp16"])
def test_down(f16, add):
    M, H, d = 13, 37, 11
    z, D = rand(M, H, seed=4), rand(d, H, seed=5, scale=1e-3)   # float16 range: scaled
    extra = rand(M, d, seed=6) if add else None
    out = T.down(z, T.split_weight(D, f16), add=extra)
    ref = z.double() @ D.double().T + (0 if extra is None else extra.double())
    assert error(out, ref) < TOL


@pytest.mark.parametrize("has_q", [False, True])
@pytest.mark.parametrize("f16", [False, True], ids=["3xtf32", "3xfp16"])
def test_entry_down(f16, has_q):
    n, K, H, H_abl, d = 2, 7, 19, 9, 12
    ks = torch.tensor([8, 0, 3, 3, 5, 1, 7])                  # ablated channels (repeats ok)
    alpha, beta = rand(n, K, seed=7), rand(n, K, seed=8)
    lp, rp = rand(H_abl, H, seed=9), rand(H_abl, H, seed=10)  # (L P)^T, (R P)^T by channel
    q_lr = rand(n, 2, H, seed=11)
    ql, qr = q_lr[:, 0], q_lr[:, 1]                           # same strides, as the plan's
    clean = rand(n, 3, H, seed=12)
    a, b = clean[:, 0], clean[:, 1]
    D = rand(d, H, seed=13)
    u1, v = rand(n, K, seed=14), rand(H_abl, d, seed=15)
    u2, q = (rand(n, K, seed=16), rand(n, d, seed=17)) if has_q else (None, None)
    out = T.entry_down(alpha, beta, ks, lp, rp, ql, qr, a, b, T.split_weight(D, f16),
                       u1, v, u2, q)
    ref = torch.empty(n * K, d, dtype=torch.float64)
    for i in range(n):                                      # the docstring, one row at a time
        for j in range(K):
            k = int(ks[j])
            d_left = alpha[i, j] * lp[k] + beta[i, j] * ql[i]
            d_right = alpha[i, j] * rp[k] + beta[i, j] * qr[i]
            dz = (a[i] * d_right + d_left * (b[i] + d_right)).double()
            row = D.double() @ dz + u1[i, j].double() * v[k].double()
            if has_q:
                row = row + u2[i, j].double() * q[i].double()
            ref[i * K + j] = row
    assert error(out, ref) < TOL


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("position", ["post", "pre"])
@pytest.mark.parametrize("norm", ["rms", "layer", "none"])
def test_plan_with_triton_gemms_matches_float64(norm, position, frozen):
    """Every ablation of a 4-layer network through the Triton suffix (entry_down, lr_dz,
    down), against the float64 per-channel loop; a fallback to cuBLAS fails the test. The
    precision alternates so that each position and each of frozen / real sees both (the
    kernels' own tests above run both precisions everywhere)."""
    precision = "3xfp16" if frozen == (position == "pre") else "3xtf32"
    model = make(norm, position, seed=0, d_in=5, d_model=10, d_hidden=12, n_layers=4, n_out=3,
                 spread=0.0, dtype=torch.float32)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    _, clean, tgt, b = prepare(model, x, "predicted", "zero", None, None)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Triton GEMMs failed")
        plan = Plan(model, frozen=frozen, precision=precision, backend="triton",
                    compile_steps=False)
        got = torch.stack([plan.effects(clean, tgt, b[:, l] - clean.z[:, l], l,
                                        torch.arange(12)) for l in range(4)], 1)
    assert plan.k.triton and plan.triton_error is None
    ref = ablation_effects_loop(model.double(), x.double(), target="predicted",
                                frozen_norm=frozen)
    assert error(got, ref) < TOL


@pytest.mark.parametrize("norm,position,f16", [
    ("rms", "pre", False), ("rms", "post", False), ("layer", "pre", False),
    ("layer", "post", False), ("none", "pre", False), ("none", "post", False),
    ("rms", "pre", True), ("layer", "pre", True)])        # the norm kernel's max|out| read
def test_sequence_plan_with_triton_gemms_matches_float64(norm, position, f16):
    """Every node of a 2-layer transformer through the Triton kernels (`down` for every
    product, `lr_dz` for the MLP's first, `attention_change` for the live attention), against
    the float64 oracle; the precision, the held flags and the target alternate over the
    cases (the kernels' own tests above run both precisions; two more run the pre-norm
    cases in float16 halves, whose products read the norm kernel's `max|out|`).
    `mean-logprob` reads every position, so the last layer carries all of them (`lr_dz` with
    `inner > 1`); `next` reads the last alone."""
    from test_sequence import tiny_transformer, tokens_for

    from bilens.ablation._engine.sequence_plan import SequencePlan
    from bilens.ablation.sequence import ablate_prepared, sequence_ablation_effects
    from bilens.core.sequence import prepare_sequence

    i = ["rms", "layer", "none"].index(norm) * 2 + (position == "post")
    precision = "3xfp16" if f16 else ("3xtf32", "3xfp16")[i % 2]
    fn, fa = (i // 2) % 2 == 1, i % 3 == 2
    target = ("next", "mean-logprob")[(i // 2) % 2]   # mean-logprob: every position read
    sizes = dict(d_model=12, d_hidden=7, n_heads=2, vocab_size=23)
    model64 = tiny_transformer(norm, position, **sizes)
    tokens = tokens_for(model64, n=2, seq=5)
    want = sequence_ablation_effects(model64, tokens, target=target, frozen_norm=fn,
                                     frozen_attn=fa)
    model = tiny_transformer(norm, position, **sizes).float()
    _, run, tgt, b = prepare_sequence(model, tokens, target, None, "zero", None, None)
    assert SequencePlan(model, run, tgt, b, precision=precision, backend="triton").triton is T
    got = ablate_prepared(model, run, tgt, b, frozen_norm=fn, frozen_attn=fa, layers=[0, 1],
                          memory="64MiB", progress=False, precision=precision,
                          backend="triton")
    assert error(got, want) < TOL


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("centre", [False, True], ids=["rms", "layer"])
@pytest.mark.parametrize("gathered", [False, True], ids=["positions-slice", "one-per-row"])
def test_norm_change_kernel_matches_float64(centre, frozen, gathered):
    """`triton_norm.norm_change` against the norm's change written from its definition in
    float64, `N(r + dh) - N(r)` with `N(x) = gamma (x - mean) / sqrt(mean (x - mean)^2 +
    eps)` (or held `s`): the clean statistics read through strides (a slice of positions
    of `[B, T, n_norms]`) or gathered one per row; rows that do not fill a program, a
    d_model that is not a power of two; `max|out|` exact, `dh` untouched."""
    from bilens.ablation._engine.triton_norm import norm_change

    b, K, S, d, eps = 3, 5, 4 if not gathered else 1, 12, 1e-5
    x = rand(b, 7, 2, d, seed=1) * 3                          # clean inputs [b, T, norms, d]
    centred = x - x.mean(-1, keepdim=True) if centre else x
    scale = (centred.pow(2).mean(-1) + eps).sqrt()            # [b, T, norms]
    pos = slice(2, 2 + S)
    s, r = scale[:, pos, 1][:, None, :, None], centred[:, pos, 1][:, None]
    if gathered:
        s, r = s.contiguous(), r.contiguous()
    dh, gamma = rand(b, K, S, d, seed=2) * 0.3, rand(d, seed=3) + 1
    before = dh.clone()
    got, top = norm_change(centre, frozen, dh, s, r, gamma, top=True)

    x64, dh64, g64 = x[:, pos, 1].double()[:, None], dh.double(), gamma.double()

    def norm(v, s_held=None):
        v = v - v.mean(-1, keepdim=True) if centre else v
        return g64 * v / (s_held if s_held is not None else
                          (v.pow(2).mean(-1, keepdim=True) + eps).sqrt())

    held = s.double() if frozen else None
    want = norm(x64 + dh64, held) - norm(x64, held)
    assert error(got, want) < 1e-6
    assert top.item() == got.abs().max().item() and torch.equal(dh, before)


_ATTENTION_CASES = {           # every query or one per sequence; changes at t alone (first)
    "every": dict(every=True, first=False),
    "every-first": dict(every=True, first=True),
    "query": dict(every=False, first=False),
    "query-first": dict(every=False, first=True),         # one row's query at t: dq counts
    "every-large": dict(every=True, first=False, size=3.0),
    "query-first-large": dict(every=False, first=True, size=3.0),
    "sharp": dict(every=True, first=False, size=1.0, sharp=30.0),    # P = 0 up to rounding
    "every-long": dict(every=True, first=False, T=70),    # two key blocks, two row blocks
    "every-first-long": dict(every=True, first=True, T=70),   # key t in the first block
    "query-first-large-long": dict(every=False, first=True, size=3.0, T=70, t=66, J=69),
    "every-wide": dict(every=True, first=False, T=40, dh=100),   # d_head 100: 32-key blocks
}


@pytest.mark.parametrize("name", list(_ATTENTION_CASES))
def test_attention_change_matches_float64_softmax(name):
    """`triton_attention.attention_change` against the definition in float64: the
    perturbed attention `softmax((q + dq)(k + dk)^T / sqrt(d_head)) (v + dv)` minus the
    clean one, written here from the formulas (rotary on the changes, the causal mask).
    Small changes take the `log1p` branch of the row statistic, large ones the logsumexp;
    `first`: the changes at position `t` alone (the layer after the ablated node's); the
    query mode reads one query per sequence (one of them at `t`). `sharp` scales the clean
    queries so that most of the pattern underflows to 0 and `dL` is very negative (a masked
    key's `expm1` overflows). `T = 70`: more keys than one block (two walks over them) and
    more queries than one block of rows; `t = 66` leaves the first key block unchanged;
    `J < T` reads fewer keys than the sequence has; `d_head = 100` takes smaller blocks."""
    from bilens.ablation._engine.triton_attention import attention_change
    from bilens.core.models.transformer import rope, rope_angles

    c = {"size": 1e-3, "T": 9, "t": 3, "dh": 6, "sharp": 1.0, **_ATTENTION_CASES[name]}
    every, first, size, T, t, dh = (c[k] for k in ("every", "first", "size", "T", "t", "dh"))
    b, K, nh = 2, 3, 2
    J = c.get("J", T)                                        # keys 0..J-1 are read
    S = J - t
    Sd = 1 if first else S
    qpos = (torch.arange(t, J)[None] if every else torch.tensor([[J - 1], [t]]))
    Sq = qpos.shape[1]
    q, k, v = (rand(b, nh, T, dh, seed=s) for s in (10, 11, 12))
    q = q * c["sharp"]
    cos, sin = rope_angles(T, dh, 10000.0, torch.float64, torch.device("cpu"))
    n_dq = 1 if first else Sq
    dq = rand(b, K, n_dq, nh, dh, seed=13, scale=size)
    dk, dv = (rand(b, K, Sd, nh, dh, seed=s, scale=size) for s in (14, 15))
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def attend(q, k, v):                                     # [.., T, dh] each, float64
        scores = (q @ k.transpose(-1, -2) / dh ** 0.5).masked_fill(~causal, float("-inf"))
        return scores.softmax(-1) @ v

    P = attend(q.double(), k.double(), torch.eye(T, dtype=torch.float64))  # the pattern
    clean = P @ v.double()                                   # [b, nh, T, dh]
    keys = torch.arange(t, t + Sd)
    want = torch.zeros(b, K, Sq, nh, dh, dtype=torch.float64)
    for i in range(b):
        for ch in range(K):
            q2, k2, v2 = (x[i].double().clone() for x in (q, k, v))
            at = keys if first else qpos[0 if every else i]  # where dq lives, per slot
            for s_, pos in enumerate(at):
                q2[:, pos] += rope(dq[i, ch, s_].double(), cos[pos], sin[pos])
            k2[:, keys] += rope(dk[i, ch].double().transpose(0, 1), cos[keys], sin[keys])
            v2[:, keys] += dv[i, ch].double().transpose(0, 1)
            out = attend(q2, k2, v2) - clean[i]              # [nh, T, dh]
            want[i, ch] = out[:, qpos[0 if every else i]].transpose(0, 1)
    got, top = attention_change(dq, dk, dv, q, k, v, P.float(), cos.float(), sin.float(),
                                qpos, t, J, amax=True)
    assert got.shape == (b, K, Sq, nh * dh)
    assert top.item() == pytest.approx(got.abs().max().item(), rel=1e-6)
    assert error(got, want.reshape(b, K, Sq, nh * dh)) < TOL


@triton.jit
def _p_expm1_kernel(p_ptr, x_ptr, out_ptr, N: tl.constexpr):
    i = tl.arange(0, N)[None, :]                   # one row: the block a kernel's row is
    tl.store(out_ptr + i, _p_expm1(tl.load(p_ptr + i), tl.load(x_ptr + i)))


def test_p_expm1_is_accurate_relative_to_itself():
    """The kernel's `p (exp(x) - 1)` against float64, elementwise: within a few float32
    roundings of itself on both sides of the polynomial's range (|x| < 1/2), 0 where `p = 0`
    even where `e^x` overflows, finite where `p` is subnormal and `e^x` alone would
    overflow. A block with every |x| < 1/2 takes the polynomial alone, one with a larger x
    the exponential too."""
    x_small = torch.linspace(-0.4999, 0.4999, 64)
    x_wide = torch.cat([torch.linspace(-0.4999, 0.4999, 32), torch.linspace(-30, 30, 30),
                        torch.tensor([200.0, 150.0])])
    p_wide = torch.cat([torch.rand(62, generator=torch.Generator().manual_seed(0)) + 1e-3,
                        torch.tensor([0.0, 1e-40])])     # 0 at e^200 = inf; subnormal at e^150
    x_mid = torch.linspace(-3, 3, 64)                  # the largest |x| in the block below 50
    for p, x in ((torch.rand(64, generator=torch.Generator().manual_seed(1)), x_small),
                 (p_wide, x_wide), (p_wide[:62].repeat(2)[:64], x_mid)):
        out = torch.empty(64)
        _p_expm1_kernel[(1,)](p, x, out, N=64)
        want = p.double() * torch.expm1(x.double())
        assert torch.isfinite(out).all()
        assert out[p == 0].eq(0).all()
        ok = p > 0
        assert ((out.double() - want)[ok].abs() / want[ok].abs()).max() < 1e-6


def test_sequence_plan_falls_back_to_torch_attention_when_the_kernel_fails(monkeypatch):
    """A Triton failure of the attention kernel (here out of shared memory, as a large
    `d_head` on a smaller GPU could be) makes the plan warn once and run the attention's
    change as torch ops; the effects stay exact."""
    from test_sequence import tiny_transformer, tokens_for
    from triton.runtime.errors import OutOfResources

    from bilens.ablation._engine import triton_attention
    from bilens.ablation.sequence import ablate_prepared, sequence_ablation_effects
    from bilens.core.sequence import prepare_sequence

    def out_of_memory(*args, **kwargs):
        raise OutOfResources(300_000, 232_448, "shared memory")

    monkeypatch.setattr(triton_attention, "attention_change", out_of_memory)
    sizes = dict(d_model=12, d_hidden=7, n_heads=2, vocab_size=23)
    model64 = tiny_transformer("rms", "pre", **sizes)
    tokens = tokens_for(model64, n=1, seq=3)
    want = sequence_ablation_effects(model64, tokens, target="next")
    model = tiny_transformer("rms", "pre", **sizes).float()
    _, run, tgt, b = prepare_sequence(model, tokens, "next", None, "zero", None, None)
    with pytest.warns(RuntimeWarning, match="fused attention kernel failed.*OutOfResources"):
        got = ablate_prepared(model, run, tgt, b, frozen_norm=False, frozen_attn=False,
                              layers=[0], memory="64MiB",
                              progress=False, precision="3xtf32", backend="triton")
    assert error(got[:, :1], want[:, :1]) < TOL              # layer 0 ablated (layer 1 NaN)


def test_a_node_batch_makes_one_zero_fill_and_tables_its_positions():
    """On an H200 the subset's batches are bound by the host (docs/lm-verification.md,
    session 11), so a batch's torch operators are counted here: one zeroed scratch for every
    kernel's `max|.|` (not one `zeros` each), the last layer's query positions and the
    readout's mask read from per-plan tables (no index arithmetic per batch), the clean
    run at `p` (logits, the norms' statistics and inputs, `L u`, `R u`) gathered once per
    plan."""
    from collections import Counter

    from test_sequence import tiny_transformer, tokens_for
    from torch.utils._python_dispatch import TorchDispatchMode

    from bilens.ablation._engine.sequence_plan import SequencePlan
    from bilens.core.sequence import prepare_sequence

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    model = tiny_transformer("rms", "pre", n_layers=2, d_model=12, d_hidden=7, n_heads=2,
                             vocab_size=23).float()
    tokens = tokens_for(model, n=1, seq=4)
    _, run, tgt, b = prepare_sequence(model, tokens, "next", None, "zero", None, None)
    plan = SequencePlan(model, run, tgt, b, precision="3xfp16", backend="triton")
    plan.effects(0, 2, slice(0, 1), slice(None))                     # compiles
    with Count() as counted:
        plan.effects(0, 2, slice(0, 1), slice(None))
    ops = counted.ops
    assert ops["zeros"] + ops["new_zeros"] == 1 and ops["zeros_like"] == 0, ops
    assert ops["remainder"] == 0 and ops["ge"] == 0 and ops["bitwise_and"] == 0, ops
    assert ops["index"] == 0, ops                    # the clean run at p: tabled per plan
    assert ops["clone"] == 0, ops                    # dh made contiguous (D^T per plan)
    assert ops["clamp"] <= 1, ops                                    # the log-prob step's own
    assert plan.scratch and all(x.data_ptr() % 16 == 0 for x in plan.scratch)  # left over:
    # aligned as Triton specializes its pointers (else each kernel compiles once more)


@pytest.mark.parametrize("target", ["next", "mean-logprob"])
@pytest.mark.parametrize("norm,position", [("rms", "pre"), ("layer", "pre"), ("rms", "post"),
                                           ("layer", "post"), ("none", "pre")])
def test_renorm_kernel_matches_float64(norm, position, target, monkeypatch):
    """`renorm`'s closed form by its Triton kernel (`attribution.triton_renorm`), in the
    attribution end to end, against the eager closed form of a float64 model: pre-norm's
    swap and post-norm's change, LayerNorm's centring; `next` at a position per sequence
    (the last layer at `p` alone: gathered rows) and `mean-logprob` (every position:
    strided views of `[B, L, T, H]`). No norm: the slope itself, no kernel."""
    from test_sequence import tiny_transformer, tokens_for

    import bilens.attribution.sequence as S
    from bilens.attribution import sequence_renorm, triton_renorm

    sizes = dict(d_model=12, d_hidden=7, n_heads=2, vocab_size=23)
    model64 = tiny_transformer(norm, position, **sizes)
    tokens = tokens_for(model64, n=3, seq=5)
    position_p = None if target == "mean-logprob" else torch.tensor([3, 1, 2])
    args = dict(target=target, position=position_p, mode="renorm", method="explicit")
    want = S.attribute_sequence(model64, tokens, **args)
    calls = []
    kernel = triton_renorm.renorm_closed_form
    monkeypatch.setattr(triton_renorm, "renorm_closed_form",
                        lambda *a, **k: calls.append(k["swap"]) or kernel(*a, **k))
    monkeypatch.setattr(S, "resolve_renorm_backend", lambda *a, **k: "triton")  # CPU here
    got = S.attribute_sequence(tiny_transformer(norm, position, **sizes).float(), tokens, **args)
    assert error(got, want) < TOL
    assert calls == ([] if norm == "none" else [position == "pre"] * 2)
    assert sequence_renorm.RENORM_BACKENDS == ("eager", "triton")


@pytest.mark.parametrize("swap", [True, False], ids=["swap", "change"])
@pytest.mark.parametrize("centre", [False, True], ids=["rms", "layer"])
def test_renorm_kernel_over_many_tiles(swap, centre):
    """`renorm_closed_form` on shapes of several tiles each way (150 rows: two row blocks;
    150 channels: three column blocks; d 80: three k-steps, the last one masked), `c`, `g`
    and `out` strided views of `[n, L, inner, H]`, against the change of the norm written
    from its definition in float64: `g_N . (N(r + c D_k) - N(r))`, with, for the swap, the
    live slope `c g` and minus the path's own slope `c D_k . J^T g_N`."""
    from bilens.attribution.triton_renorm import renorm_closed_form

    n, inner, d, H = 5, 30, 80, 150
    M = n * inner
    r = rand(M, d, seed=20).double()
    if centre:
        r = r - r.mean(-1, keepdim=True)
    s = (r.pow(2).mean(-1) + 0.3).sqrt()                        # eps inside s, as the norms
    D = rand(d, H, seed=21, scale=d ** -0.5).double()
    Dc = D - D.mean(0) if centre else D
    gamma, g_n = 1 + 0.1 * rand(d, seed=22).double(), rand(M, d, seed=23).double()
    c = rand(M, H, seed=24).double()
    gy = gamma * g_n
    slope = (gy @ Dc) / s[:, None] - (gy * r).sum(-1, keepdim=True) * (r @ Dc) / (
        d * s[:, None] ** 3)                                    # D_k . J^T g_N
    g = slope if not swap else rand(M, H, seed=25).double()
    new = r[:, None, :] + c[:, :, None] * Dc.T[None]            # [M, H, d]: r + c D_k
    s_new = (s[:, None] ** 2 + (new.pow(2).sum(-1) - r.pow(2).sum(-1, keepdim=True)) / d).sqrt()
    change = (gy[:, None, :] * (new / s_new[..., None] - (r / s[:, None])[:, None])).sum(-1)
    want = c * g - c * slope + change if swap else change
    big = torch.zeros(n, 3, inner, H)                           # a [n, L, inner, H] result
    views = [rand(n, 3, inner, H, seed=26 + i) for i in range(2)]
    views[0][:, 1] = c.float().reshape(n, inner, H)
    views[1][:, 1] = g.float().reshape(n, inner, H)
    renorm_closed_form(r.float(), g_n.float(), gamma.float(), D.float(), s.float(),
                       views[0][:, 1], views[1][:, 1], big[:, 1], swap=swap, centre=centre)
    assert error(big[:, 1].reshape(M, H), want) < TOL
    assert (big[:, 0] == 0).all() and (big[:, 2] == 0).all()    # the other layers untouched


def test_renorm_kernel_failure_falls_back_once(monkeypatch):
    """A Triton error in `renorm`'s kernel: one warning, the eager closed form's numbers, and
    the kernel is not tried again in the process."""
    from test_sequence import tiny_transformer, tokens_for

    import bilens.attribution.sequence as S
    from bilens.attribution import sequence_renorm, triton_renorm
    from bilens.core.triton_gemm import TRITON_ERRORS

    model = tiny_transformer("rms", "pre", d_model=12, d_hidden=7, n_heads=2,
                             vocab_size=23).float()
    tokens = tokens_for(model, n=2, seq=5)
    want = S.attribute_sequence(model, tokens, target="next", mode="renorm")
    tries = []

    def broken(*args, **kwargs):
        tries.append(1)
        raise TRITON_ERRORS[0]("out of resources (a test)")
    monkeypatch.setattr(triton_renorm, "renorm_closed_form", broken)
    monkeypatch.setattr(sequence_renorm, "_FAILED", [])
    monkeypatch.setattr(S, "resolve_renorm_backend", lambda *a, **k: "triton")
    with pytest.warns(RuntimeWarning, match="renorm's Triton kernel failed.*out of resources"):
        got = S.attribute_sequence(model, tokens, target="next", mode="renorm")
    assert torch.equal(got, want)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert torch.equal(S.attribute_sequence(model, tokens, target="next", mode="renorm"),
                           want)
    assert len(tries) == 1

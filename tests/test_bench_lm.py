"""`bilens bench --kind transformer`: its comparison rows compute the oracle's effects and the
attribution, its float64 gate, the JSON it writes, and its one-line errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from test_sequence import tiny_transformer, tokens_for
from torch.testing import assert_close

from bilens.ablation.sequence import sequence_ablation_effects
from bilens.attribution.sequence import attribute_sequence
from bilens.cli import main
from bilens.core.errors import BilensError
from bilens.core.sequence import prepare_sequence
from bilens.experiments import bench_lm
from bilens.experiments.bench_lm import LMBenchConfig, run_lm_bench
from bilens.experiments.competitors_lm import (
    ZSeq,
    captum_gxa,
    captum_node_ablation,
    hook_loop,
    prefix_loop,
)


def tiny(**over) -> LMBenchConfig:
    base = dict(n=3, n_layers=2, d_model=8, d_hidden=6, n_heads=2, seq_len=6, vocab_size=11,
                memory="64MiB", every=2, ppe=(4, 16), repeats=1)
    return LMBenchConfig(**{**base, **over})


@pytest.mark.parametrize("position", ["pre", "post"])
def test_comparison_rows_compute_the_oracle_and_the_gradient(position):
    """ZSeq is the model; the hook loop, captum's node ablation and (pre-norm) the prefix
    loop give the oracle's effects; captum's gradient x activation is `-live` (zero baseline:
    `c = -z`)."""
    model = tiny_transformer("layer", position, n_layers=3)
    data = tokens_for(model, n=2, seq=7)
    tokens, nxt = data[:, :-1], data[:, -1]
    znet = ZSeq(model, nxt)
    want = model(tokens)[:, -1].log_softmax(-1).gather(1, nxt[:, None])[:, 0]
    assert_close(znet(tokens), want)
    oracle = sequence_ablation_effects(model, data, target="next")           # [B, L, T, H]
    groups = [(1, t) for t in (0, 2, 5)]
    one = ZSeq(model, nxt[:1])
    ref = torch.stack([oracle[0, l, t] for l, t in groups])
    assert_close(hook_loop(one, tokens[:1], groups), ref, rtol=1e-7, atol=1e-10)
    if importlib.util.find_spec("captum") is not None:
        assert_close(captum_node_ablation(one, tokens[:1], groups, ppe=4), ref, rtol=1e-7,
                     atol=1e-10)
        live = attribute_sequence(model, data, target="next", mode="live")
        assert_close(captum_gxa(znet, tokens), -live)
        assert_close(captum_gxa(znet, tokens, per_layer=True), -live)
    if position == "pre":
        _, run, tgt, b = prepare_sequence(model, data[:1], "next", None, "zero", None, None)
        pre = prefix_loop(model, run, tgt, b, groups)
        assert_close(torch.stack([pre[g] for g in groups]), ref, rtol=1e-7, atol=1e-10)


def test_run_and_json(tmp_path):
    pytest.importorskip("captum")
    res = run_lm_bench(tiny(), log=lambda _: None)
    for key in ("attribution_renorm_over_forward", "attribution_speedup_vs_captum",
                "oracle_speedup_vs_prefix_loop", "oracle_speedup_vs_hook_loop",
                "oracle_speedup_vs_captum"):
        assert res[key] > 0, key
    rows = res["rows"]
    assert rows["oracle eager fp32, every node"]["agree_float64"] <= 1e-5
    assert rows["subset prefix-reusing batched loop"]["agree"] < 1e-4
    assert res["sizes"]["nodes"] == 3 * 2 * 6 * 6
    out = tmp_path / "bench.json"
    argv = ["bench", "--kind", "transformer", "--quick", "--n", "2", "--layers", "2",
            "--d-model", "8", "--d-hidden", "6", "--heads", "2", "--seq-len", "6", "--every",
            "3", "--ppe", "4", "--no-loop", "--out", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["config"]["n"] == 2 and "oracle_speedup_vs_captum" in data
    assert main(argv) == 2                                    # no replacing without --force


def test_no_timing_without_float64_agreement(monkeypatch):
    """The gate: an oracle off by 1e-4 of its size is refused before any time counts."""
    real = bench_lm.sequence_ablation_effects

    def off(model, *args, **kw):
        out = real(model, *args, **kw)
        return out * (1 + 1e-4) if model.dtype == torch.float32 else out

    monkeypatch.setattr(bench_lm, "sequence_ablation_effects", off)
    with pytest.raises(BilensError, match="disagrees with float64"):
        run_lm_bench(tiny(captum=False, loop=False), log=lambda _: None)


def test_post_norm_skips_the_prefix_loop():
    res = run_lm_bench(tiny(position="post", captum=False, loop=False, full=False),
                       log=lambda _: None)
    assert "oracle_speedup_vs_prefix_loop" not in res
    assert any("pre-norm" in n for n in res["notes"])
    assert not any(k.endswith("every node") for k in res["rows"])


@pytest.mark.parametrize("argv,message", [
    (["--kind", "transformer", "--data", "mnist"], "--data: not used by --kind transformer"),
    (["--seq-len", "8"], "--seq-len: a transformer option"),
    (["--kind", "transformer", "--precision", "3xfp16"], "exists only as Triton"),
    (["--kind", "transformer", "--backend", "triton", "--precision", "fp32,3xtf32"], ""),
])
def test_one_line_errors(argv, message, capsys, tmp_path):
    out = tmp_path / "never.json"
    rc = main(["bench", "--quick", "--no-captum", "--no-loop", "--no-full", *argv, "--n", "1",
               "--out", str(out)] if "--seq-len" not in argv else
              ["bench", "--quick", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    if not message:                   # fp32 under triton: compile; on a CPU both run eager
        assert rc == 0 and out.exists()
        return
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not out.exists()

"""`bilens bench`: the JSON it writes, and its comparison rows computing the same thing."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bilens.ablation import ablation_effects
from bilens.cli import main
from bilens.core.config import ModelConfig
from bilens.core.models.mlp import BilinearNet
from bilens.experiments.bench import BenchConfig, ablation_flops, forward_flops, run_bench
from bilens.experiments.competitors import ZNet, captum_ablation, hook_loop


def tiny(**over) -> BenchConfig:
    base = dict(n=6, n_layers=2, d_model=8, d_hidden=12, d_in=10, ppe=(4, 16), ppe_inputs=6,
                repeats=1)
    return BenchConfig(**{**base, **over})


@pytest.mark.parametrize("position", ["post", "pre"])
def test_comparison_rows_compute_the_same_effects(position):
    pytest.importorskip("captum")
    torch.manual_seed(0)
    cfg = ModelConfig(d_in=5, d_model=6, d_hidden=7, n_layers=3, n_out=4, norm="layer",
                      norm_position=position)
    model = BilinearNet(cfg).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    classes = model(x).argmax(-1)
    ours = ablation_effects(model, x, target=classes)
    znet = ZNet(model)
    torch.testing.assert_close(znet(x), model(x))
    torch.testing.assert_close(hook_loop(znet, x, classes), ours)
    torch.testing.assert_close(captum_ablation(znet, x, classes, ppe=3), ours)


def test_run_bench_json(tmp_path):
    pytest.importorskip("captum")
    res = run_bench(tiny(), log=lambda _: None)
    for key in ("attribution_over_forward", "ablation_speedup_vs_captum",
                "ablation_speedup_vs_loop", "sizes", "rows"):
        assert key in res
    assert res["sizes"]["channels"] == 24
    assert all(r["ok"] for k, r in res["rows"].items() if k.startswith("ablation bilens"))
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--n", "4", "--d-model", "8", "--d-hidden", "8",
                 "--ppe", "4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["sizes"]["n_inputs"] == 4 and data["ablation_speedup_vs_loop"] > 0


def test_without_captum_and_loop():
    res = run_bench(tiny(captum=False, loop=False, position="pre"), log=lambda _: None)
    assert "ablation_speedup_vs_captum" not in res and res["ablation_seconds"] > 0


def _counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("n_layers", [2, 4])
@pytest.mark.parametrize("norm,position", [("rms", "post"), ("layer", "pre")])
def test_flop_counts_match_what_the_code_does(norm, position, n_layers):
    """`forward_flops` is what `FlopCounterMode` counts in a forward pass; `ablation_flops` is
    the per-input matmul work of a real `ablation_effects` run (two batch sizes, so the
    weight-only precomputation cancels), less the clean forward and the per-input and head
    products it leaves out (a few per cent at these sizes: it may only undercount)."""
    cfg = ModelConfig(d_in=4, d_model=16, d_hidden=256, n_layers=n_layers, n_out=2, norm=norm,
                      norm_position=position)
    torch.manual_seed(0)
    model = BilinearNet(cfg)
    x = torch.randn(4, cfg.d_in)
    assert _counted_flops(lambda: model(x)) == forward_flops(cfg, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                   # one thread: every op under the counter
    try:
        per_input = (_counted_flops(lambda: ablation_effects(model, x))
                     - _counted_flops(lambda: ablation_effects(model, x[:2]))) / 2
    finally:
        torch.set_num_threads(threads)
    suffix = per_input - forward_flops(cfg, 1)
    assert 0.97 * suffix <= ablation_flops(cfg, 1) <= suffix, (ablation_flops(cfg, 1), suffix)
    assert ablation_flops(cfg, 5) == 5 * ablation_flops(cfg, 1)


def test_missing_captum_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_captum(name, *args, **kwargs):
        if name.startswith("captum"):
            raise ImportError("no captum")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_captum)
    from bilens.core.errors import BilensError
    with pytest.raises(BilensError, match="--no-captum"):
        run_bench(tiny(), log=lambda _: None)


def test_precision_list(capsys):
    """A comma list of precisions times each (on a CPU every one runs as float32, and the
    row names say which precision was asked for); an unknown one is refused first."""
    res = run_bench(tiny(captum=False, loop=False, precision="3xtf32,3xfp16", backend="triton"),
                    log=lambda _: None)
    rows = [k for k in res["rows"] if k.startswith("ablation bilens")]
    assert rows == ["ablation bilens fp32", "ablation bilens 3xtf32", "ablation bilens 3xfp16"]
    assert all(res["rows"][k]["ok"] for k in rows)
    assert main(["bench", "--quick", "--precision", "fp32,bf16"]) == 2
    assert "--precision" in capsys.readouterr().err

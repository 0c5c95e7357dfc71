"""`compare --kind transformer` and the transformer sweeps: the grid, caching keyed by the
config, the rows re-derived from an independent `verify_sequence`, the no-norm identities,
aggregation over seeds, the L1 penalty, and the commands' refusals."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from bilens.analysis.verify_sequence import verify_sequence
from bilens.core.checkpoint import load
from bilens.core.config import TransformerConfig
from bilens.core.lm_data import load_lm_data
from bilens.experiments.compare import Spec
from bilens.experiments.lm_compare import (
    LM_MODES,
    LMRunner,
    compare_lm,
    lm_cache_key,
    sequence_active_fraction,
)
from bilens.experiments.sweeps import sweep
from bilens.training.lm import LMTrainConfig, train_lm

TINY = Spec("synthetic-lm", {"d_model": 8, "d_hidden": 8, "n_layers": 2, "n_heads": 2},
            {"steps": 8, "batch_size": 8, "lr": 1e-2})


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("lmc")
    runner = LMRunner(out / "models", device="cpu", n_verify=2, verify_len=8, log=None)
    return out, runner, compare_lm("synthetic-lm", seeds=2, out=out, spec=TINY, runner=runner)


def test_grid_rows_and_file(compared):
    out, _, result = compared
    assert len(result.rows) == 12
    assert {(r["norm"], r["position"]) for r in result.table} == {
        (n, p) for n in ("none", "rms", "layer") for p in ("pre", "post")}
    saved = json.loads((out / "compare-lm.json").read_text())
    assert saved["settings"]["kind"] == "transformer" and saved["settings"]["complete"]
    assert saved["settings"]["n_verify"] == 2 and saved["settings"]["verify_len"] == 8
    for row in result.rows:
        assert set(LM_MODES) <= set(row) and "margin" in row
        assert math.isfinite(row["test_loss"]) and row["perplexity"] == pytest.approx(
            math.exp(row["test_loss"]))


def test_row_equals_an_independent_verification(compared):
    """The row's numbers are `verify_sequence`'s on the cached checkpoint, recomputed."""
    _, runner, result = compared
    row = next(r for r in result.rows if r["norm"] == "layer" and r["position"] == "post")
    model = load(row["model_dir"])
    rows = load_lm_data("synthetic-lm", 32).test[:2, :9]
    v = verify_sequence(model, rows[:, :-1], target="next", labels=rows[:, 1:],
                        progress=False)
    for mode in LM_MODES:
        assert row[mode]["ne"] == pytest.approx(
            v.metrics["modes"][mode]["overall"]["normalized_error"], rel=1e-9)
    split = v.metrics["split"]["overall"]
    assert row["drift"]["ne_drift"] == pytest.approx(split["norm_drift"], rel=1e-9)
    assert row["drift"]["ne_attention"] == pytest.approx(split["attention_change"], rel=1e-9)
    assert row["drift"]["ne_gating"] == pytest.approx(split["gating"], rel=1e-9)


def test_no_norm_identities(compared):
    """Without a norm, holding norms changes nothing: frozen-norm = live, no norm drift; and
    pre and post are the same network, so it is trained once and reported under both."""
    from bilens.core.models.transformer import BilinearTransformer

    _, _, result = compared
    for row in (r for r in result.rows if r["norm"] == "none"):
        assert row["frozen-norm"]["ne"] == pytest.approx(row["live"]["ne"], rel=1e-6)
        assert row["drift"]["ne_drift"] == pytest.approx(0.0, abs=1e-9)
    pre, post = (next(r for r in result.rows if r["norm"] == "none" and r["position"] == p
                      and r["seed"] == 0) for p in ("pre", "post"))
    assert pre["model_dir"] == post["model_dir"]
    model = load(pre["model_dir"]).double()
    as_post = BilinearTransformer(replace(model.config, norm_position="post")).double()
    as_post.load_state_dict(model.state_dict())
    tokens = load_lm_data("synthetic-lm", 32).test[:3, :-1]
    torch.testing.assert_close(as_post(tokens), model(tokens), rtol=1e-12, atol=1e-12)


def test_aggregate_is_the_mean_over_seeds(compared):
    _, _, result = compared
    rows = [r for r in result.rows if r["norm"] == "rms" and r["position"] == "pre"]
    cell = next(r for r in result.table if r["norm"] == "rms" and r["position"] == "pre")
    assert cell["n_seeds"] == 2
    values = [r["frozen-norm"]["ne"] for r in rows]
    assert cell["frozen-norm.ne"] == pytest.approx(sum(values) / 2)
    assert cell["frozen-norm.ne_std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    d0 = [r["live"]["ne_by_distance"][0][1] for r in rows]
    assert cell["live.ne_by_distance"][0] == pytest.approx([0.0, sum(d0) / 2])


def test_cache_reused_and_forced(compared, tmp_path):
    out, runner, result = compared
    again = compare_lm("synthetic-lm", seeds=2, spec=TINY, runner=runner)
    assert all(r["reused"] for r in again.rows)
    assert [r["frozen"]["ne"] for r in again.rows] == [r["frozen"]["ne"] for r in result.rows]
    forced = LMRunner(out / "models", device="cpu", n_verify=2, verify_len=8, force=True,
                      log=None)
    assert not forced.evaluate(TINY.with_(model={"norm": "rms"}))["reused"]


def test_cache_key_covers_the_config_but_not_the_device():
    mc = TransformerConfig(vocab_size=64, n_ctx=32, d_model=8, d_hidden=8, n_layers=1,
                           n_heads=2)
    tc = LMTrainConfig(steps=4)
    key = lm_cache_key("synthetic-lm", mc, tc, 32)
    assert lm_cache_key("synthetic-lm", mc, replace(tc, device="cuda"), 32) == key
    changed = {lm_cache_key("text", mc, tc, 32), lm_cache_key("synthetic-lm", mc, tc, 16),
               lm_cache_key("synthetic-lm", replace(mc, norm="layer"), tc, 32),
               lm_cache_key("synthetic-lm", replace(mc, attn_scale=0.5), tc, 32),
               lm_cache_key("synthetic-lm", mc, replace(tc, l1=0.1), 32),
               lm_cache_key("synthetic-lm", mc, replace(tc, seed=1), 32)}
    assert len(changed | {key}) == 7


def test_sweep_depth_on_the_transformer(compared, tmp_path):
    _, runner, _ = compared
    base = TINY
    result = sweep("depth", "synthetic-lm", out=tmp_path, values=(1, 2), runner=runner,
                   epochs=base.train["steps"])
    assert [r["x"] for r in result.table] == [1, 2]
    assert [len(r["frozen-norm.ne_per_layer"]) for r in result.table] == [1, 2]
    assert all(math.isfinite(r["margin.frozen-norm.ne"]) for r in result.table)  # 2nd target
    assert all(r["margin"]["frozen-norm"]["ne"] != r["frozen-norm"]["ne"] for r in result.rows)
    saved = json.loads((tmp_path / "sweep-lm-depth.json").read_text())
    assert saved["settings"]["also_targets"] == ["margin"]
    with pytest.raises(Exception, match="position"):
        sweep("position", "synthetic-lm", runner=runner)


def test_active_fraction_by_hand():
    gen = torch.Generator().manual_seed(0)
    model = train_lm(TransformerConfig(vocab_size=64, n_ctx=32, d_model=8, d_hidden=4,
                                       n_layers=2, n_heads=2),
                     LMTrainConfig(steps=1, device="cpu"), load_lm_data("synthetic-lm", 32),
                     progress=False).model
    z = torch.randn(3, 2, 5, 4, generator=gen, dtype=torch.float64)
    active, total = 0, 0
    for b in range(3):
        for l in range(2):
            d = model.layers[l].D.detach().double().norm(dim=0)
            for t in range(5):
                write = [abs(float(z[b, l, t, k])) * float(d[k]) for k in range(4)]
                active += sum(w > 0.1 * max(write) for w in write)
                total += 4
    assert sequence_active_fraction(model, z) == pytest.approx(active / total)


def test_l1_penalty_shrinks_z():
    data = load_lm_data("synthetic-lm", 32)
    cfg = TransformerConfig(vocab_size=64, n_ctx=32, d_model=16, d_hidden=16, n_layers=1,
                            n_heads=2)
    mean_z = []
    for l1 in (0.0, 1.0):
        model = train_lm(cfg, LMTrainConfig(steps=40, batch_size=16, l1=l1, device="cpu"),
                         data, progress=False).model
        with torch.no_grad():
            mean_z.append(model.run(data.test[:16, :-1]).z.abs().mean().item())
    assert mean_z[1] < 0.5 * mean_z[0]


@pytest.mark.parametrize("argv, message", [
    (["--kind", "transformer", "--dataset", "digits"], "not a dataset of --kind transformer"),
    (["--dataset", "text"], "not a dataset of --kind mlp"),
    (["--kind", "transformer", "--epochs", "2"], "use --steps"),
    (["--steps", "2"], "use --epochs"),
])
def test_compare_refuses_mixed_families(tmp_path, argv, message, capsys):
    """One line on stderr, a non-zero status, nothing written (in this process: the console
    script's exit status is `test_cli_foundation.py`'s)."""
    from bilens.cli import main

    out = tmp_path / "out"
    assert main(["compare", *argv, "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_train_cli_passes_l1_and_refuses_input_noise(tmp_path, capsys):
    """`bilens train --kind transformer --l1` reaches the penalty (it was once ignored);
    `--input-noise` has no meaning for token ids and is refused (in this process: the
    console script's exit status is `test_cli_foundation.py`'s)."""
    from bilens.cli import main

    base = ["train", "--kind", "transformer", "--steps", "2", "--d-model", "8", "--d-hidden",
            "8", "--layers", "1", "--heads", "2", "--device", "cpu", "--no-progress"]
    assert main([*base, "--l1", "0.25", "--out", str(tmp_path / "m")]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["training"]["l1"] == 0.25
    capsys.readouterr()
    assert main([*base, "--input-noise", "0.1", "--out", str(tmp_path / "n")]) != 0
    assert "--input-noise" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


def test_force_trains_the_no_norm_network_once(tmp_path):
    """none/pre and none/post are one network: under --force it is retrained once, not
    once per position (the second would overwrite the first's checkpoint)."""
    lines = []
    runner = LMRunner(tmp_path / "models", device="cpu", n_verify=1, verify_len=8, force=True,
                      log=lines.append)
    result = compare_lm("synthetic-lm", seeds=1, spec=TINY, runner=runner)
    assert sum("training" in x and "none/pre" in x for x in lines) == 1
    assert sum(x.startswith("training") for x in lines) == 5
    none = [r for r in result.rows if r["norm"] == "none"]
    assert none[0]["model_dir"] == none[1]["model_dir"]


def test_margin_by_distance_is_aggregated(compared):
    _, _, result = compared
    cell = next(r for r in result.table if r["norm"] == "rms" and r["position"] == "pre")
    assert len(cell["margin.live.ne_by_distance"]) == 8
    assert math.isfinite(cell["margin.drift.ne_interaction"])


def test_sweep_grid_keeps_its_number_type():
    """`--values 0` on the L1 grid is the grid's 0.0: one cache key, not two."""
    from bilens.experiments.sweeps import LM_SWEEPS, sweep_specs

    specs = sweep_specs(LM_SWEEPS["sparsity"], TINY, (0, 3))
    assert [type(s.train["l1"]) for s in specs] == [float, float]

"""`bilens.verify` on a sequence model: the SPEC §9 tensors, the metrics, the error split,
the report files, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from test_sequence import tiny_transformer, tokens_for
from torch.testing import assert_close

import bilens
from bilens import report
from bilens.analysis.verify_result import VerifyResult
from bilens.core.errors import BilensError


@pytest.fixture(scope="module")
def result():
    model = tiny_transformer("layer", "pre")
    tokens = tokens_for(model, n=3, seq=7)
    return model, tokens, bilens.verify(model, tokens, target="next", position=[3, 5, 4],
                                        progress=False, circuit_ks=(1, 4))


def test_tensors_follow_spec_9(result):
    model, tokens, r = result
    t = r.tensors
    N, T = 3, 6
    assert t["tokens"].shape == (N, T) and t["tokens"].dtype == torch.int64
    assert t["target_position"].tolist() == [3, 5, 4]
    assert_close(t["label"], tokens[torch.arange(3), torch.tensor([4, 6, 5])])
    shape = (N, 2, T, 5)
    for name in ("activation", "predicted.frozen", "predicted.frozen-norm", "predicted.live",
                 "predicted.renorm", "actual", "actual_frozen_norm", "actual_frozen_attn",
                 "actual_frozen_both"):
        assert t[name].shape == shape, name
    after = torch.arange(T)[None, :] > t["target_position"][:, None]
    for name in ("actual", "actual_frozen_both", "predicted.live"):
        assert (t[name].permute(0, 2, 1, 3)[after] == 0).all()
    assert r.modes == ["frozen", "frozen-norm", "live", "renorm"]


def test_split_telescopes(result):
    """a - p_f = (a - a_n) + (a_n - a_b) + (a_b - p_f), node by node; the split's parts are
    each measured against sum|a|."""
    _, _, r = result
    t = r.tensors
    a, an, ab, pf = (t[k] for k in ("actual", "actual_frozen_norm", "actual_frozen_both",
                                    "predicted.frozen"))
    assert_close(a - pf, (a - an) + (an - ab) + (ab - pf))
    s = r.metrics["split"]["overall"]
    assert s["frozen_ne"] <= s["norm_drift"] + s["attention_change"] + s["gating"] + 1e-12
    m = r.metrics["modes"]["live"]
    assert {"overall", "per_layer", "by_distance", "node_types", "circuit"} <= set(m)
    assert m["by_distance"][0]["distance"] == 0
    assert 0 <= m["node_types"]["before_p"]["sign_error_share"] <= 1


def test_layers_not_ablated_are_nan():
    model = tiny_transformer("rms", "post")
    r = bilens.verify(model, tokens_for(model), target="class:2", layers=[1], progress=False,
                      circuit_ks=())
    assert torch.isnan(r.tensors["actual"][:, 0]).all()
    assert torch.isfinite(r.tensors["actual"][:, 1]).all()
    assert math.isnan(r.metrics["modes"]["frozen"]["per_layer"][0]["pearson"])


def test_save_and_load(result, tmp_path):
    _, _, r = result
    out = report.save_verify(r, tmp_path / "v")
    names = {p.name for p in out.iterdir()}
    assert {"results.safetensors", "metrics.json", "summary.md", "scatter.png",
            "error_by_layer.png", "error_by_distance.png", "faithfulness.png"} <= names
    assert "error split" in (out / "summary.md").read_text()
    back = VerifyResult.load(out)
    assert back.metrics["kind"] == "sequence"
    assert_close(load_file(str(out / "results.safetensors"))["actual"], r.tensors["actual"])


@pytest.mark.parametrize("kw,match", [
    (dict(position=7), "beyond the sequence"),
    (dict(modes=("frozen", "exact")), "sequence-model attribution mode"),
    (dict(channels=[0]), "not used for a sequence model"),
])
def test_bad_input(kw, match):
    model = tiny_transformer()
    with pytest.raises(BilensError, match=match):
        bilens.verify(model, tokens_for(model), progress=False, **kw)
    with pytest.raises(BilensError, match="n_ctx"):
        bilens.verify(model, torch.zeros(2, 20, dtype=torch.long), progress=False)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A transformer checkpoint as another tool would write it (config.json with
    kind: transformer, SPEC §9 tensor names) and a tokens file."""
    import json

    from safetensors.torch import save_file

    model = tiny_transformer("rms", "pre")
    root = tmp_path_factory.mktemp("lm")
    ckpt = root / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(ckpt / "model.safetensors"))
    save_file({"tokens": tokens_for(model, n=4, seq=8)}, str(root / "tokens.safetensors"))
    return ckpt, root / "tokens.safetensors"


def test_cli_verify_sequence(lm_dir, tmp_path, capsys):
    from bilens.cli import main

    ckpt, tokens = lm_dir
    out = tmp_path / "v"
    rc = main(["verify", str(ckpt), "--tokens", str(tokens), "--n", "2", "--seq-len", "6",
               "--target", "next", "--circuit-ks", "1,2", "--no-progress", "--float64",
               "--out", str(out)])
    assert rc == 0
    assert "error split" in capsys.readouterr().out
    t = load_file(str(out / "results.safetensors"))
    assert t["tokens"].shape == (2, 6) and t["actual"].shape == (2, 2, 6, 5)


@pytest.mark.parametrize("argv,message", [
    (["--position", "9"], "beyond the sequence"),
    (["--seq-len", "7", "--target", "class:1"], ""),
    (["--modes", "frozen,exact"], "sequence-model attribution mode"),
    (["--backend", "triton", "--precision", "fp32"], "runs split products"),
    (["--precision", "3xfp16"], "exists only as Triton GEMMs"),
])
def test_cli_sequence_one_line_errors(lm_dir, tmp_path, capsys, argv, message):
    from bilens.cli import main

    ckpt, tokens = lm_dir
    out = tmp_path / "never"
    rc = main(["verify", str(ckpt), "--tokens", str(tokens), "--n", "2", "--no-progress",
               "--out", str(out), *argv])
    err = capsys.readouterr().err
    if not message:                          # 7 tokens read: fine (n_ctx is 8)
        assert rc == 0
        return
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_sequence_longer_than_context(lm_dir, tmp_path, capsys):
    from safetensors.torch import save_file

    from bilens.cli import main

    ckpt, _ = lm_dir
    long = tmp_path / "long.safetensors"
    save_file({"tokens": torch.zeros(2, 12, dtype=torch.long)}, str(long))
    rc = main(["verify", str(ckpt), "--tokens", str(long), "--no-progress", "--out",
               str(tmp_path / "never")])
    assert rc == 2 and "n_ctx" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()

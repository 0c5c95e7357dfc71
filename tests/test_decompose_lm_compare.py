"""Issue 16 on language models: every transformer of a comparison decomposed
(`decompose_compared` on a `compare_lm`-shaped dict), claim 11 judged on its records, and
the report's token tables, on tiny random transformers saved as checkpoints."""

from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from conftest import CASES, randomize_norms

from bilens import report
from bilens.core.checkpoint import save
from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer
from bilens.experiments.decompose_models import (
    N_TARGETS,
    TOKEN_VECTORS,
    decompose_compared,
    frequent_next_tokens,
    section,
)
from bilens.experiments.decomposition import claim_features_intact
from bilens.experiments.summary import build

VOCAB, D, SEQ, SEEDS = 40, 16, 12, 2


def _transformer(norm: str, position: str, seed: int) -> BilinearTransformer:
    cfg = TransformerConfig(vocab_size=VOCAB, n_ctx=SEQ, d_model=D, d_hidden=24, n_layers=2,
                            n_heads=2, norm=norm, norm_position=position)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BilinearTransformer(cfg).double()
    return randomize_norms(model, torch.Generator().manual_seed(seed), torch.float64)


@pytest.fixture(scope="module")
def lm_comparison(tmp_path_factory):
    """A `CompareResult.to_dict()`-shaped transformer comparison (checkpoints on disk) and
    its held-out data, as `compare_lm` and `LMRunner.dataset` give them."""
    root = tmp_path_factory.mktemp("lmc")
    rows = []
    for seed in range(SEEDS):
        for norm, position in CASES:
            directory = root / f"{norm}-{position}-{seed}"
            save(_transformer(norm, position, seed), directory, {"dataset": "synthetic-lm"})
            rows.append({"norm": norm, "position": position, "seed": seed,
                         "model_dir": str(directory)})
    gen = torch.Generator().manual_seed(7)
    test = torch.randint(VOCAB, (10, SEQ + 1), generator=gen)
    test[:, 1::3] = 5                                  # token 5 comes next most often
    data = SimpleNamespace(test=test, tokenizer=None, vocab_size=VOCAB)
    cmp = {"dataset": "synthetic-lm", "settings": {"kind": "transformer"}, "rows": rows}
    return cmp, (lambda name, split: data), data


@pytest.fixture(scope="module")
def decomposed(lm_comparison):
    cmp, dataset_of, _ = lm_comparison
    return decompose_compared(cmp, dataset_of, n=8, stability_n=6)


def test_frequent_next_tokens_counts_the_next_tokens():
    rows = torch.tensor([[9, 3, 3, 2], [3, 3, 7, 7]])       # next: 3 3 2 3 7 7 (9 never)
    assert Counter([3, 3, 2, 3, 7, 7]).most_common(2) == [(3, 3), (7, 2)]
    assert frequent_next_tokens(rows, 2) == ["class:3", "class:7"]
    assert frequent_next_tokens(rows, 9) == ["class:3", "class:7", "class:2"]   # seen only
    ties = torch.tensor([[0, 6, 4, 6, 4]])
    assert frequent_next_tokens(ties, 1) == ["class:4"]       # a tie: the lower id first


def test_every_transformer_gives_a_record(decomposed, lm_comparison):
    _, _, data = lm_comparison
    settings, records = decomposed["settings"], decomposed["records"]
    assert settings["kind"] == "transformer" and settings["n_sequences"] == 8
    assert settings["n_inputs"] == 8 * SEQ and settings["ks"] == [1, 2, 4, 8, D]
    assert settings["targets"] == frequent_next_tokens(data.test[:8])
    assert settings["targets"][0] == "class:5" and len(settings["targets"]) == N_TARGETS
    assert len(records) == len(CASES) * SEEDS
    for rec in records:
        assert rec["kind"] == "transformer" and rec["d_model"] == D
        faith = rec["faithfulness"]
        assert faith["n_inputs"] == 8 * SEQ and faith["last_layer"]["stability"]["n_inputs"] == 6
        assert "frozen_ne" not in faith["last_layer"]             # slim: means only
        assert faith["last_layer"]["live_ne_mean"][-1] < 1e-9       # rank d_model is exact
        if rec["norm"] == "none":                                   # frozen = live
            assert faith["last_layer"]["stability"]["overlap_mean"] == pytest.approx([1.0] * 3)
            assert max(faith["last_layer"]["gap_ne_mean"]) < 1e-9


def test_claim_is_judged_on_the_transformer_records(decomposed):
    claim = claim_features_intact(decomposed["records"], dataset="synthetic-lm")
    assert claim["verdict"] in ("holds", "partly", "fails")
    # d_model 16: k = 16 is the whole form, left out; 4 configs x k in (1, 4) remain
    assert sorted(claim["numbers"]["intact"]) == sorted(
        f"{n}/{p}/k{k}" for n in ("rms", "layer") for p in ("post", "pre") for k in (1, 4))
    assert len(claim["numbers"]["not_applicable"]) == 4
    rows = {(r["norm"], r["position"]): r for r in claim["numbers"]["rows"]}
    assert rows["none", "pre"]["overlap@4"] == pytest.approx(1.0, abs=1e-9)
    assert rows["none", "post"]["extra@1"] == pytest.approx(0.0, abs=1e-9)
    assert rows["rms", "pre"]["n_seeds"] == SEEDS


def test_sections_hold_token_lists_not_images(decomposed):
    sections = decomposed["sections"]
    assert [(s["norm"], s["position"]) for s in sections] == [
        ("none", "post"), ("rms", "post"), ("rms", "pre"), ("layer", "post"), ("layer", "pre")]
    for sec in sections:
        assert sec["kind"] == "transformer" and sec["images"] is None
        assert set(sec["spectrum"]) == {"0", "1"} and len(sec["spectrum"]["1"][0]) == D
        assert "tokens" not in sec["summary"]
        rows = sec["tokens"]["layers"]["1"]
        assert len(rows) == N_TARGETS * TOKEN_VECTORS
        assert rows[0]["positive"][0]["token"] == str(rows[0]["positive"][0]["id"])


def test_demo_sized_models_decompose_fast(tmp_path):
    """The demo's six synthetic-lm transformers (d_model 32, 2 layers, 64 tokens, 32
    sequences of 32): docs/decomposition.md measures about 0.2 s on one thread."""
    import time

    rows = []
    for norm, position in CASES:
        cfg = TransformerConfig(vocab_size=64, n_ctx=32, d_model=32, d_hidden=64, n_layers=2,
                                n_heads=2, norm=norm, norm_position=position)
        torch.manual_seed(0)
        save(BilinearTransformer(cfg), tmp_path / f"{norm}-{position}")
        rows.append({"norm": norm, "position": position, "seed": 0,
                     "model_dir": str(tmp_path / f"{norm}-{position}")})
    data = SimpleNamespace(test=torch.randint(64, (64, 33), generator=torch.Generator()))
    start = time.perf_counter()
    out = decompose_compared({"dataset": "synthetic-lm", "settings": {"kind": "transformer"},
                              "rows": rows}, lambda name, split: data)
    assert time.perf_counter() - start < 10                 # loose: a shared, loaded machine
    assert out["settings"]["n_inputs"] == 32 * 32 and len(out["records"]) == 6


def test_report_renders_lm_sections_beside_the_mlp_ones(decomposed, tmp_path, make_model):
    from bilens.analysis.decompose import decompose

    mlp_records, mlp_sections = [], []
    for norm, position in CASES:
        model = make_model(norm, position, 0, d_in=64, d_model=8, d_hidden=10, n_out=3)
        dec = decompose(model, inputs=torch.randn(20, 64, dtype=torch.float64))
        row = {"norm": norm, "position": position, "seed": 0}
        mlp_records.append({"dataset": "digits", **row, "faithfulness": dec.faithfulness})
        if (norm, position) != ("none", "pre"):
            mlp_sections.append(section(dec, model, "digits", row))
    results = build({"title": "lm report", "decomposition": {
        "settings": {"n_inputs": 20, "stability_n": 16}, "records": mlp_records,
        "sections": mlp_sections}, "lm": {"decomposition": decomposed}})
    mlp = results["claims"][10]
    assert mlp["id"] == "features_intact" and set(mlp["numbers"]["by_dataset"]) == {"digits"}
    lm = next(c for c in results["lm"]["claims"] if c["id"] == "features_intact")
    assert lm["verdict"] != "not measured"
    assert set(lm["numbers"]["by_dataset"]) == {"synthetic-lm"}
    paths = report.write(results, tmp_path)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert "language models (synthetic-lm)" in md
    assert md.count("#### LM decomposition: ") == 5 and md.count("### Decomposition: ") == 5
    assert md.count("| layer | target | i | eigenvalue |") == 5
    assert page.count("<h4>LM decomposition: ") == 5 and page.count("class='tokens'") == 5
    shown = tmp_path / "report"
    for name in ("spectrum", "faithfulness"):
        assert (shown / f"lm-decomposition-lm-rms-pre-{name}.png").is_file()
    assert not list(shown.glob("*decomposition-lm-rms-pre-eigenvectors.png"))
    assert (shown / "lm-decomposition-lm-compare.png").is_file()
    for name in ("spectrum", "eigenvectors", "faithfulness"):           # the MLP's unchanged
        assert (shown / f"decomposition-rms-pre-{name}.png").is_file()
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (paths["markdown"].parent / name).is_file(), name

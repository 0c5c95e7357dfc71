"""The claim "normalization leaves weight-based features intact": its rule on hand-made
faithfulness numbers (each case chosen so that one clause decides it), and end to end."""

from __future__ import annotations

import pytest
import torch

from bilens.experiments.decomposition import (
    claim_features_intact,
    decomposition_table,
    mean_sd,
    not_distinguishable,
)

KS = [1, 2, 4, 8, 16, 32]
CONFIGS = [(n, p) for n in ("none", "rms", "layer") for p in ("post", "pre")]


def faith(overlap: float = 0.99, extra: float = 0.01, frozen: float = 0.3) -> dict:
    return {"ks": KS, "direct_share_total_mean": 1.0,
            "last_layer": {"frozen_ne_mean": [frozen] * len(KS),
                           "live_ne_mean": [frozen + extra] * len(KS),
                           "stability": {"ks": [1, 4, 16], "overlap_mean": [overlap] * 3}}}


def records(seeds: int = 3, **per_config) -> list[dict]:
    """Every config x seed; `per_config["rms/post"] = [faith(...) per seed]` overrides."""
    out = []
    for norm, position in CONFIGS:
        for s in range(seeds):
            chosen = per_config.get(f"{norm}/{position}")
            out.append({"dataset": "mnist", "norm": norm, "position": position, "seed": s,
                        "faithfulness": chosen[s] if chosen else faith()})
    return out


def test_noise_rule_and_mean_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert not_distinguishable(0.2, 0.1) and not not_distinguishable(0.21, 0.1)
    assert not not_distinguishable(0.0, float("nan"))


def test_all_intact_holds():
    claim = claim_features_intact(records())
    assert claim["verdict"] == "holds", claim
    assert all(claim["numbers"]["intact"].values()) and len(claim["numbers"]["intact"]) == 12


def test_unstable_eigenvectors_fail_the_cell():
    low = [faith(overlap=0.5)] * 3
    one = claim_features_intact(records(**{"layer/post": low}))
    assert one["verdict"] == "partly" and "layer/post k=1" in one["why"]
    two = claim_features_intact(records(**{"layer/post": low, "rms/pre": low}))
    assert two["verdict"] == "fails"            # 6 of 12 cells: at most half


def test_extra_error_counts_unless_small_or_within_noise():
    consistent = [faith(extra=0.2 + d) for d in (-0.01, 0.0, 0.01)]          # 0.2 ± 0.01
    noisy = [faith(extra=0.2 + d) for d in (-0.15, 0.0, 0.15)]               # 0.2 ± 0.15
    small = [faith(extra=0.04)] * 3
    assert claim_features_intact(records(**{"rms/post": consistent}))["verdict"] == "partly"
    assert claim_features_intact(records(**{"rms/post": noisy}))["verdict"] == "holds"
    assert claim_features_intact(records(**{"rms/post": small}))["verdict"] == "holds"


def test_single_seed_uses_the_threshold_only():
    assert claim_features_intact(records(1, **{"rms/pre": [faith(extra=0.06)]}))[
        "verdict"] == "partly"


def test_not_measured_without_normalized_models():
    only_none = [r for r in records() if r["norm"] == "none"]
    assert claim_features_intact(only_none)["verdict"] == "not measured"
    assert claim_features_intact(records(), dataset="fashion-mnist")["verdict"] == "not measured"


def test_versus_none_uses_the_pooled_noise_rule():
    lower = [faith(frozen=0.1 + d) for d in (-0.01, 0.0, 0.01)]
    near = [faith(frozen=0.3 + d) for d in (-0.05, 0.0, 0.05)]
    claim = claim_features_intact(records(**{"rms/post": lower, "layer/post": near}))
    vs = claim["numbers"]["versus_none"]
    assert vs["mnist/rms/post/k1"] == "lower"
    assert vs["mnist/layer/post/k1"] == "not distinguishable"


def test_table_rows_are_per_config_with_sd():
    rows = decomposition_table(records())
    assert len(rows) == 6 and all(r["n_seeds"] == 3 for r in rows)
    assert rows[0]["overlap@1"] == pytest.approx(0.99) and rows[0]["overlap@1_sd"] == 0


def test_end_to_end_on_tiny_models(make_model):
    from bilens.analysis.decompose import decompose

    recs = []
    for norm, position in CONFIGS:
        for seed in range(2):
            model = make_model(norm, position, seed, d_model=16, d_hidden=20)
            x = torch.randn(30, 5, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(seed))
            recs.append({"dataset": "tiny", "norm": norm, "position": position, "seed": seed,
                         "faithfulness": decompose(model, inputs=x).faithfulness})
    claim = claim_features_intact(recs)
    assert claim["verdict"] in ("holds", "partly", "fails")
    rows = {(r["norm"], r["position"]): r for r in claim["numbers"]["rows"]}
    # no norm: the live linearization is the frozen one
    assert rows["none", "post"]["overlap@4"] == pytest.approx(1.0, abs=1e-9)
    assert rows["none", "pre"]["extra@16"] == pytest.approx(0.0, abs=1e-9)

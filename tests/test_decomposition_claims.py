"""The claim "normalization leaves weight-based features intact": its rule on hand-made
faithfulness numbers (each case chosen so that one clause decides it), for the MLP's records
and the transformers' (`kind: transformer`, `d_model`), and end to end."""

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


def faith(overlap: float = 0.99, extra: float = 0.01, frozen: float = 0.3,
          ks: list[int] = KS) -> dict:
    stab = [k for k in (1, 4, 16) if k <= ks[-1]]
    return {"ks": ks, "direct_share_total_mean": 1.0,
            "last_layer": {"frozen_ne_mean": [frozen] * len(ks),
                           "live_ne_mean": [frozen + extra] * len(ks),
                           "stability": {"ks": stab, "overlap_mean": [overlap] * len(stab)}}}


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


# --- language models: the same rule on transformer records -------------------------------

def lm_records(seeds: int = 3, d_model: int = 32, **per_config) -> list[dict]:
    """`records` as `decompose_compared` gives them for a transformer comparison."""
    return [{**r, "dataset": "synthetic-lm", "kind": "transformer", "d_model": d_model}
            for r in records(seeds, **per_config)]


def test_rule_assumptions_hold_for_the_lm_comparisons():
    """Every k of the rule is below the d_model of every comparison's transformer (32 for
    synthetic-lm, 256 for text), on the faithfulness grid and the stability grid alike."""
    from bilens.analysis.eigen_faithfulness import STABILITY_KS
    from bilens.experiments.decompose_models import ks_for
    from bilens.experiments.decomposition import KS as RULE_KS
    from bilens.experiments.lm_compare import LM_PRESETS

    sizes = sorted(p["model"]["d_model"] for p in LM_PRESETS.values())
    assert sizes == [32, 256]
    for d in sizes:
        assert max(RULE_KS) < d
        assert set(RULE_KS) <= set(ks_for(d)) and ks_for(d)[-1] == d
        assert set(RULE_KS) <= {k for k in STABILITY_KS if k <= d}
        assert max(RULE_KS) / d <= 0.5 < 0.9             # chance overlap well below the line


def test_lm_overlap_on_each_side_of_the_line():
    above = [faith(overlap=0.901)] * 3
    below = [faith(overlap=0.899)] * 3
    assert claim_features_intact(lm_records(**{"rms/pre": above}))["verdict"] == "holds"
    claim = claim_features_intact(lm_records(**{"rms/pre": below}), dataset="synthetic-lm")
    assert claim["verdict"] == "partly" and claim["why"] == (
        "not intact: rms/pre k=1, rms/pre k=4, rms/pre k=16")
    assert claim["numbers"]["intact"]["rms/pre/k4"] is False


def test_lm_extra_error_on_each_side_of_the_thresholds():
    assert claim_features_intact(lm_records(1, **{"layer/post": [faith(extra=0.049)]}))[
        "verdict"] == "holds"
    assert claim_features_intact(lm_records(1, **{"layer/post": [faith(extra=0.051)]}))[
        "verdict"] == "partly"
    noisy = [faith(extra=0.2 + d) for d in (-0.11, 0.0, 0.11)]     # |0.2| <= 2 x 0.11
    clear = [faith(extra=0.2 + d) for d in (-0.09, 0.0, 0.09)]     # |0.2| >  2 x 0.09
    assert claim_features_intact(lm_records(**{"layer/post": noisy}))["verdict"] == "holds"
    assert claim_features_intact(lm_records(**{"layer/post": clear}))["verdict"] == "partly"


def test_k_at_or_above_d_model_is_not_applicable():
    small = {f"{n}/{p}": [faith(ks=[1, 2, 4, 8])] * 3 for n, p in CONFIGS}
    claim = claim_features_intact(lm_records(d_model=8, **small))
    assert claim["verdict"] == "holds" and len(claim["numbers"]["intact"]) == 8
    assert sorted(claim["numbers"]["not_applicable"]) == sorted(
        f"synthetic-lm/{n}/{p}/k16" for n in ("rms", "layer") for p in ("post", "pre"))
    assert "k=16" not in claim["measured"] and "k >= d_model left out" in claim["rule"]
    unknown = [{k: v for k, v in r.items() if k != "d_model"} for r in lm_records(**small)]
    assert claim_features_intact(unknown)["verdict"] == "partly"    # k=16 unmeasured: counts
    big = claim_features_intact(lm_records(d_model=256))
    assert len(big["numbers"]["intact"]) == 12 and not big["numbers"]["not_applicable"]
    assert "left out" not in big["rule"]
    assert big["numbers"]["chance_overlap"]["synthetic-lm/k16"] == 16 / 256


def test_mlp_and_lm_records_together_name_each_dataset():
    low = [faith(overlap=0.5)] * 3
    both = records() + lm_records(**{"rms/pre": low})
    claim = claim_features_intact(both)
    assert claim["verdict"] == "partly"                              # 21 of 24 cells
    assert claim["numbers"]["by_dataset"] == {"mnist": "holds", "synthetic-lm": "partly"}
    assert "synthetic-lm rms/pre k=1" in claim["why"] and "mnist rms/pre" in claim["measured"]
    assert claim["numbers"]["intact"]["synthetic-lm/rms/pre/k1"] is False
    assert claim["numbers"]["intact"]["mnist/rms/pre/k1"] is True
    only = claim_features_intact(both, dataset="mnist")
    assert only["verdict"] == "holds" and "rms/pre/k1" in only["numbers"]["intact"]


def test_claims_table_judges_transformer_records():
    from bilens.experiments.claims import evaluate_claims

    low = [faith(overlap=0.5)] * 3
    claims = evaluate_claims({"decomposition": {"records": lm_records(**{"rms/post": low})}})
    claim = claims[10]
    assert claim["id"] == "features_intact" and claim["verdict"] == "partly"
    assert "rms/post k=1" in claim["why"]

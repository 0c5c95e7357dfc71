"""The claims table's verdict rules and the recommendation, on hand-made result dicts.

Each case sets numbers on one side or the other of a documented threshold and checks the
verdict that the rule in `bilens.claims`'s docstring gives; no expected value is copied
from the code's output.
"""

from __future__ import annotations

import math

import pytest

from bilens.experiments import claims
from bilens.experiments.recommend import recommend

CONFIGS = [(n, p) for n in ("none", "rms", "layer") for p in ("post", "pre")]


def fake_row(norm: str = "rms", position: str = "post", *, acc: float = 0.98,
             acc_std: float = 0.0, ne: float = 0.1, live: float = 0.05, drift: float = 0.05,
             gating: float = 0.05, ds: float = 0.006, active: float = 0.1, seeds: int = 3,
             **extra) -> dict:
    """One aggregated table row with every key the report and the claims read."""
    row = {"norm": norm, "position": position, "n_seeds": seeds, "test_accuracy": acc,
           "test_accuracy_std": acc_std, "active_fraction": active, "train_time": 1.0,
           "frozen.ne": ne, "live.ne": live, "frozen.pearson": 0.9, "live.pearson": 0.95,
           "frozen.spearman": 0.9, "live.spearman": 0.95, "frozen.top10": 0.8,
           "live.top10": 0.9, "frozen.sign": 0.95, "live.sign": 0.97,
           "drift.ne_drift": drift, "drift.ne_gating": gating,
           "drift.drift_share": drift / (drift + gating) if drift + gating else math.nan,
           "drift.ds_over_s": ds, "drift.ds_over_s_median": ds, "drift.seed_estimate": ds,
           "drift.delta_over_r": 0.1, "drift.formula_corr": 0.99, "drift.effect_ratio": 0.5,
           "verify_time": 1.0, "frozen.ne_per_layer": [ne, ne], "live.ne_per_layer": [live, live],
           "drift.ne_drift_per_layer": [drift, drift], "drift.ne_gating_per_layer": [gating] * 2}
    for k in list(row):
        if k not in ("norm", "position", "n_seeds") and not isinstance(row[k], list):
            row.setdefault(k + "_std", 0.0)
    row.update(extra)
    return row


def fake_compare(overrides: dict | None = None) -> dict:
    """A comparison table: by default none is perfect but less accurate, RMS and LayerNorm
    are accurate; `overrides[(norm, position)]` replaces fields."""
    base = {"none": dict(acc=0.89, ne=0.001, live=0.001, drift=0.0, gating=0.001, ds=0.0),
            "rms": dict(acc=0.95, ne=0.004, live=0.003, drift=0.002, gating=0.002),
            "layer": dict(acc=0.98, ne=0.30, live=0.02, drift=0.28, gating=0.02)}
    table = []
    for norm, pos in CONFIGS:
        kw = dict(base[norm])
        kw.update((overrides or {}).get((norm, pos), {}))
        table.append(fake_row(norm, pos, **kw))
    settings = {"dataset": "digits", "seeds": 3, "model": {"d_model": 64, "d_hidden": 128,
                "n_layers": 3}, "train": {"epochs": 5, "batch_size": 64, "lr": 0.003},
                "n_verify": 32, "target": "predicted"}
    return {"dataset": "digits", "settings": settings, "table": table, "rows": []}


def fake_sweep(name: str, xs: list, rows: list[dict], variants=(("rms", "post"),)) -> dict:
    table = []
    for norm, pos in variants:
        for x, kw in zip(xs, rows, strict=True):
            table.append(fake_row(norm, pos, x=x, **kw))
    settings = {"dataset": "digits", "param": f"model.{name}", "values": xs, "seeds": 1,
                "model": {"d_model": 256, "d_hidden": 128, "n_layers": 3},
                "train": {"epochs": 5, "batch_size": 64, "lr": 0.003}, "n_verify": 32}
    return {"name": name, "dataset": "digits", "param": f"model.{name}", "label": name,
            "log_x": name == "d_model", "settings": settings, "table": table, "rows": []}


def verdict(results: dict, cid: str) -> dict:
    found = [c for c in claims.evaluate_claims(results) if c["id"] == cid]
    assert len(found) == 1, cid
    return found[0]


def test_spearman_by_hand():
    assert claims.spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert claims.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1 2 3, y = 1 3 2: rho = 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5
    assert claims.spearman([1, 2, 3], [5, 9, 7]) == pytest.approx(0.5)
    assert math.isnan(claims.spearman([1, 2], [3, 4]))
    assert math.isnan(claims.spearman([1, 2, 3], [1, 1, 1]))
    assert claims.spearman([1, 2, math.nan, 3], [1, 2, 0, 3]) == pytest.approx(1.0)


def test_pct_keeps_small_values_visible():
    assert claims.pct(0.0123) == "1.2%"
    assert claims.pct(0.0) == "0.0%"
    assert claims.pct(2.5e-6, 2) == "0.00025%"
    assert claims.pct(math.nan) == "n/a"


@pytest.mark.parametrize("ln, rms_ne, expected", [
    (dict(ne=0.30, drift=0.28), 0.01, "holds"),      # coupling 28% and 30x RMS
    (dict(ne=0.30, drift=0.28), 0.29, "partly"),     # coupled, but RMS just as bad
    (dict(ne=0.03, drift=0.02), 0.01, "partly"),     # 3x RMS, but coupling < 10%
    (dict(ne=0.03, drift=0.02), 0.03, "fails"),
])
def test_layernorm_claim(ln, rms_ne, expected):
    cmp = fake_compare({("layer", "post"): ln, ("rms", "post"): dict(ne=rms_ne)})
    assert verdict({"compare": cmp}, "layernorm")["verdict"] == expected


@pytest.mark.parametrize("point, expected", [
    (dict(ne=0.008, ds=0.006, active=0.11), "holds"),
    (dict(ne=0.008, ds=0.006, active=0.35), "partly"),   # right number, condition unmet
    (dict(ne=0.30, ds=0.004, active=0.10), "partly"),    # |ds/s| as predicted, error large
    (dict(ne=0.30, ds=0.0001, active=0.10), "fails"),
])
def test_seed_error_claim_uses_point_nearest_ten_percent(point, expected):
    far = dict(ne=5.0, ds=0.1, active=0.40)                  # must not be picked
    sweep = fake_sweep("sparsity", [0.0, 1.0], [far, point])
    claim = verdict({"sweeps": {"sparsity": sweep}}, "rms_error")
    assert claim["verdict"] == expected
    assert claim["numbers"]["frozen_ne"] == point["ne"]
    if expected != "holds":
        assert claim["why"]


def test_noise_rule_by_hand():
    from bilens.experiments.stats import noise_compare, pooled_sd

    # pooled sd of two groups of 3 seeds: sqrt((2 * 0.1^2 + 2 * 0.2^2) / 4) = sqrt(0.025)
    assert pooled_sd(0.1, 3, 0.2, 3) == pytest.approx(math.sqrt(0.025))
    assert pooled_sd(0.1, 1, 0.2, 3) == pytest.approx(0.2)        # one seed adds no spread
    assert math.isnan(pooled_sd(0.0, 1, 0.0, 1))                  # no spread known at all
    # 2 pooled sd = 2 * sqrt(0.025) = 0.316: 0.31 apart is not distinguishable, 0.32 is
    assert noise_compare(1.31, 0.1, 3, 1.0, 0.2, 3)["verdict"] == "not distinguishable"
    assert noise_compare(1.32, 0.1, 3, 1.0, 0.2, 3)["verdict"] == "higher"
    assert noise_compare(1.0, 0.1, 3, 1.32, 0.2, 3)["verdict"] == "lower"
    one = noise_compare(1.0, 0.0, 1, 1.001, 0.0, 1)               # one seed: the means alone
    assert one["verdict"] == "lower" and "spread unknown" in one["text"]


def accuracies(accs: dict, std: float = 0.001) -> dict:
    """A comparison whose rows have these mean accuracies (norm/position -> acc), 3 seeds."""
    return fake_compare({tuple(k.split("/")): dict(acc=a, acc_std=std) for k, a in accs.items()})


MNIST_ACC = {"none/post": 0.9831, "none/pre": 0.9831, "rms/post": 0.9840, "rms/pre": 0.9861,
             "layer/post": 0.9834, "layer/pre": 0.9862}     # docs/results.md, H200, 3 seeds


@pytest.mark.parametrize("none_acc, std, expected", [
    (0.89, 0.0, "holds"),      # 9 pp below the best normalized (98%)
    (0.95, 0.0, "partly"),     # 3 pp: distinguishable, but not ~9
    (0.975, 0.0, "partly"),    # 0.5 pp: small, but beyond the seeds' spread (0 here)
    (0.975, 0.004, "fails"),   # 0.5 pp within 2 pooled sd = 0.8 pp: not distinguishable
    (0.95, 0.02, "fails"),     # 3 pp, but 2 pooled sd = 4 pp
    (0.99, 0.0, "fails"),      # no norm more accurate
])
def test_no_norm_accuracy_claim(none_acc, std, expected):
    cmp = fake_compare({(n, p): dict(acc=none_acc if n == "none" else 0.98, acc_std=std)
                        for n in ("none", "rms", "layer") for p in ("post", "pre")})
    claim = verdict({"compare": cmp}, "no_norm_accuracy")
    assert claim["verdict"] == expected
    if std and expected == "fails":
        assert "not distinguishable" in claim["measured"] + claim["why"]


def test_no_norm_accuracy_compares_with_the_best_normalized_configuration():
    """Issue 12 item 18: against post-norm LayerNorm (98.34%) no norm (98.31%) looks free;
    against the best normalized configuration, pre-norm LayerNorm (98.62%), it is 0.31 pp
    lower, beyond 2 pooled sd (sd 0.1 pp per config here: 2 pooled sd = 0.2 pp)."""
    claim = verdict({"compare": accuracies(MNIST_ACC)}, "no_norm_accuracy")
    assert claim["numbers"]["best"] == "layer/pre"
    assert claim["numbers"]["gap_pp"] == pytest.approx(0.31)
    assert claim["verdict"] == "partly"           # a real cost, far from the seed's 9 points
    noisy = verdict({"compare": accuracies(MNIST_ACC, std=0.003)}, "no_norm_accuracy")
    assert noisy["verdict"] == "fails" and "not distinguishable" in noisy["measured"]


@pytest.mark.parametrize("accs, expected", [
    ((0.90, 0.95, 0.98), "holds"), ((0.90, 0.99, 0.98), "partly"),
    ((0.96, 0.95, 0.98), "fails"), ((0.95, 0.95, 0.95), "fails")])
def test_rms_between_claim(accs, expected):
    cmp = fake_compare({(n, p): dict(acc=a) for n, a in zip(("none", "rms", "layer"), accs,
                                                             strict=True)
                        for p in ("post", "pre")})
    assert verdict({"compare": cmp}, "rms_between")["verdict"] == expected


def test_rms_between_does_not_flip_on_noise():
    """Issue 12 item 18: claim 4 flipped between verdicts on 0.06 pp. With the noise rule,
    RMSNorm 0.03 pp above or below LayerNorm (seed sd 0.1 pp) is the same verdict."""
    verdicts = set()
    for shift in (-0.0003, 0.0, 0.0003):
        accs = {"none/post": 0.9831, "none/pre": 0.9831, "rms/post": 0.9862 + shift,
                "rms/pre": 0.97, "layer/post": 0.9862, "layer/pre": 0.97}
        verdicts.add(verdict({"compare": accuracies(accs)}, "rms_between")["verdict"])
    assert verdicts == {"partly"}     # above no norm, not distinguishable from LayerNorm


def test_sparsity_claim_trends():
    actives = [0.05, 0.10, 0.20, 0.40]
    shrinking = [dict(active=a, ne=a, ds=a / 10) for a in actives]     # error grows with active
    flat_ds_only = [dict(active=a, ne=0.5 - (i % 2) * 0.1, ds=a / 10)
                    for i, a in enumerate(actives)]
    growing = [dict(active=a, ne=1 - a, ds=0.1 - a / 10) for a in actives]
    for rows, expected in ((shrinking, "holds"), (flat_ds_only, "partly"), (growing, "fails")):
        sweep = fake_sweep("sparsity", [0.0, 1.0, 3.0, 10.0][::-1], rows)
        assert verdict({"sweeps": {"sparsity": sweep}}, "sparsity")["verdict"] == expected


def test_sparsity_claim_partly_when_only_the_penalty_tracks_the_error():
    # error falls with the L1 penalty, but the measured active fraction is not monotone in it
    l1 = [0.0, 1.0, 3.0, 10.0]
    rows = [dict(active=a, ne=ne, ds=0.001) for a, ne in
            ((0.13, 19.0), (0.035, 1.7), (0.04, 0.5), (0.095, 0.33))]
    claim = verdict({"sweeps": {"sparsity": fake_sweep("sparsity", l1, rows)}}, "sparsity")
    assert claim["verdict"] == "partly"
    assert claim["numbers"]["rho_ne_vs_l1"] == pytest.approx(1.0)
    assert "L1 penalty" in claim["why"]


def test_d_model_claim_direction():
    ds = [64, 128, 256, 512]
    falling = [dict(ne=1 / d, ds=1 / d) for d in ds]
    rising = [dict(ne=d / 1000, ds=d / 1000) for d in ds]
    assert verdict({"sweeps": {"d_model": fake_sweep("d_model", ds, falling)}},
                   "d_model")["verdict"] == "holds"
    assert verdict({"sweeps": {"d_model": fake_sweep("d_model", ds, rising)}},
                   "d_model")["verdict"] == "fails"


@pytest.mark.parametrize("deep_drift, expected", [(0.03, "holds"), (0.10, "partly"),
                                                  (0.50, "fails")])
def test_compounding_claim(deep_drift, expected):
    sweep = fake_sweep("depth", [1, 4, 8], [dict(drift=0.001), dict(drift=0.01),
                                            dict(drift=deep_drift)])
    assert verdict({"sweeps": {"depth": sweep}}, "compounding")["verdict"] == expected


@pytest.mark.parametrize("post, pre, std, expected", [
    (0.10, 0.20, 0.0, "holds"), (0.10, 0.11, 0.0, "fails"), (0.10, 0.20, 0.05, "fails")])
def test_position_claim(post, pre, std, expected):
    cmp = fake_compare({("rms", "post"): dict(ne=post, **{"frozen.ne_std": std}),
                        ("rms", "pre"): dict(ne=pre, **{"frozen.ne_std": std}),
                        ("layer", "post"): dict(ne=0.3, live=0.02),
                        ("layer", "pre"): dict(ne=0.3, live=0.02)})
    assert verdict({"compare": cmp}, "position")["verdict"] == expected


def test_drift_vs_gating_and_none_perfect():
    cmp = fake_compare({("rms", "post"): dict(drift=0.5, gating=0.01)})
    assert verdict({"compare": cmp}, "drift_vs_gating")["verdict"] == "fails"
    cmp = fake_compare({("rms", "post"): dict(drift=0.01, gating=0.02)})
    assert verdict({"compare": cmp}, "drift_vs_gating")["verdict"] == "holds"
    assert verdict({"compare": cmp}, "none_perfect")["verdict"] == "holds"
    cmp = fake_compare({("none", "post"): dict(ne=0.2)})
    assert verdict({"compare": cmp}, "none_perfect")["verdict"] == "fails"


def test_missing_experiments_are_not_measured():
    out = claims.evaluate_claims({})
    assert len(out) == 11
    assert {c["verdict"] for c in out} == {"not measured"}
    only_compare = claims.evaluate_claims({"compare": fake_compare()})
    by_id = {c["id"]: c["verdict"] for c in only_compare}
    assert by_id["sparsity"] == by_id["d_model"] == by_id["compounding"] == "not measured"
    assert by_id["layernorm"] != "not measured"


def test_recommendation_prefers_faithful_among_accurate():
    # none: faithful but 9 pp less accurate; rms: accurate, live NE 5%; layer: best accuracy
    # but live NE 20%. Within 1 pp of the best (98.5%) are rms (98%) and layer.
    cmp = fake_compare({(n, p): v for p in ("post", "pre") for n, v in (
        ("none", dict(acc=0.895, ne=0.001, live=0.001)),
        ("rms", dict(acc=0.98 if p == "post" else 0.96, ne=0.5, live=0.05)),
        ("layer", dict(acc=0.985, ne=0.6, live=0.2)))})
    rec = recommend(cmp)
    assert (rec["norm"], rec["position"], rec["mode"]) == ("rms", "post", "live")
    assert rec["expected_ne"] == 0.05
    assert any("none/post" in t for t in rec["text"])      # the faithful alternative is named
    # widen the seed spread: 2 sd = 10 pp, so none counts as accurate and wins
    for row in cmp["table"]:
        row["test_accuracy_std"] = 0.05
    assert recommend(cmp)["norm"] == "none"


def test_a_tie_between_modes_recommends_the_exact_gradient():
    """Without a norm frozen and live coincide; a tie must not recommend the frozen mode,
    which the same report shows failing on every normalized network."""
    cmp = fake_compare({(n, p): dict(acc=0.99 if n == "none" else 0.90)
                        for n in ("none", "rms", "layer") for p in ("post", "pre")})
    rec = recommend(cmp)
    assert rec["norm"] == "none" and rec["mode"] == "live"
    for row in cmp["table"]:                   # a real gap still decides: frozen clearly best
        if row["norm"] == "none":
            row["frozen.ne"], row["live.ne"] = 0.001, 0.002
    assert recommend(cmp)["mode"] == "frozen"

"""The language-model claims, recommendation and their combination with the MLP's, on
hand-made tables.

Every case sets numbers on one side or the other of a threshold of `claim_rules` (or the
noise rule of `stats`) and checks the verdict the rule in `bilens.experiments.lm_claims`'
docstring gives; no expected value is copied from the code's output. The post-norm rows
(and the frozen mode's numbers) carry values that would flip the verdict if a claim read
them instead of the reference rms/pre row and the frozen-norm mode.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from bilens.experiments import lm_claims, recommend, stats
from bilens.experiments.lm_claims import evaluate_lm_claims
from bilens.experiments.recommend import NOTHING, combine, recommend_lm
from bilens.experiments.summary import build, collect

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "docs" / "data" / "lm-synthetic" / "compare-lm.json"
CONFIGS = [(n, p) for n in ("none", "rms", "layer") for p in ("pre", "post")]
PARTS = {"frozen": "frozen.ne", "fn": "frozen-norm.ne", "live": "live.ne",
         "renorm": "renorm.ne", "drift": "drift.ne_drift", "attn": "drift.ne_attention",
         "gating": "drift.ne_gating"}
VERDICTS = {"holds", "partly", "fails", "not measured"}


def lm_row(norm: str = "rms", position: str = "pre", *, loss: float = 3.0,
           loss_std: float = 0.0, seeds: int = 1, active: float = 0.1, d_model: int = 32,
           distance: list | None = None, live_distance: list | None = None,
           margin: dict | None = None, no_margin: bool = False, **kw) -> dict:
    """One aggregated `compare_lm` row. `kw` sets the parts of `PARTS` (frozen, fn, live,
    renorm, drift, attn, gating) or any column by its name; the margin target's columns
    copy them unless `margin` overrides some (or `no_margin` leaves them NaN)."""
    parts = {"frozen": 0.4, "fn": 0.3, "live": 0.1, "renorm": 0.08, "drift": 0.2,
             "attn": 0.1, "gating": 0.02}
    parts.update({k: kw.pop(k) for k in list(kw) if k in PARTS})
    row = {"norm": norm, "position": position, "kind": "transformer", "n_seeds": seeds,
           "d_model": d_model, "test_loss": loss, "test_loss_std": loss_std,
           "perplexity": math.exp(loss), "test_accuracy": 0.3, "active_fraction": active,
           "drift.ne_interaction": 0.0, "drift.ne_drift_per_layer": [parts["drift"]] * 2}
    row.update({PARTS[k]: v for k, v in parts.items()})
    for mode in ("frozen", "frozen-norm", "live", "renorm"):
        row.update({f"{mode}.pearson": 0.9, f"{mode}.top10": 0.8, f"{mode}.sign": 0.9})
    m = {**parts, **(margin or {})}
    for k, path in PARTS.items():
        row[f"margin.{path}"] = math.nan if no_margin else m[k]
    if distance is not None:
        row["frozen-norm.ne_by_distance"] = [[float(d), v] for d, v in enumerate(distance)]
    if live_distance is not None:
        row["live.ne_by_distance"] = [[float(d), v] for d, v in enumerate(live_distance)]
    row.update(kw)
    for k in list(row):
        if isinstance(row[k], float) and not k.endswith("_std"):
            row.setdefault(k + "_std", 0.0)
    return row


def lm_compare(overrides: dict | None = None, **common) -> dict:
    """A comparison: by default no norm, RMSNorm and LayerNorm at losses 3.3, 3.2, 3.1;
    `overrides[(norm, position)]` replaces fields; `common` goes to every row."""
    base = {"none": dict(loss=3.3, fn=0.15, live=0.15, renorm=0.15, drift=0.0),
            "rms": dict(loss=3.2), "layer": dict(loss=3.1)}
    table = [lm_row(n, p, **{**base[n], **common, **(overrides or {}).get((n, p), {})})
             for n, p in CONFIGS]
    return {"dataset": "synthetic-lm", "settings": {"kind": "transformer", "target": "next"},
            "table": table, "rows": []}


def lm_sweep(name: str, xs: list, rows: list[dict], position: str = "pre",
             post: dict | None = None) -> dict:
    """An LM sweep of rms rows at `position`; `post` adds post-norm rows with these fields
    at every x (a reader of the wrong position sees them)."""
    table = [lm_row("rms", position, x=x, **kw) for x, kw in zip(xs, rows, strict=True)]
    if post is not None:
        table += [lm_row("rms", "post", x=x, **post) for x in xs]
    return {"name": name, "table": table, "settings": {}, "rows": []}


def claim(lm: dict, cid: str) -> dict:
    found = [c for c in evaluate_lm_claims(lm) if c["id"] == cid]
    assert len(found) == 1, cid
    return found[0]


# ------------------------------------------------------------------ LayerNorm vs RMSNorm

# coupling (LayerNorm's norm-drift NE) against 10%, LayerNorm's frozen-norm NE against
# 2 x RMSNorm's (0.1 here: 0.21 is 2.1x, 0.19 is 1.9x)
@pytest.mark.parametrize("drift, ne_layer, expected", [
    (0.11, 0.21, "holds"), (0.11, 0.19, "partly"), (0.09, 0.21, "partly"),
    (0.09, 0.19, "fails")])
def test_layernorm_claim_reads_the_pre_rows_and_frozen_norm(drift, ne_layer, expected):
    cmp = lm_compare({("layer", "pre"): dict(drift=drift, fn=ne_layer, frozen=0.01),
                      ("rms", "pre"): dict(fn=0.1, frozen=0.9),
                      ("layer", "post"): dict(drift=0.9, fn=0.9),     # would always hold
                      ("rms", "post"): dict(fn=0.01)})
    found = claim({"compare": cmp}, "layernorm")
    assert found["verdict"] == expected
    assert "rms/pre row is the reference" in found["rule"]
    assert "frozen-norm" in found["rule"]


def test_layernorm_claim_judges_the_margin_target_too():
    cmp = lm_compare({("layer", "pre"): dict(drift=0.3, fn=0.6, margin=dict(drift=0.05,
                                                                             fn=0.15)),
                      ("rms", "pre"): dict(fn=0.1)})
    found = claim({"compare": cmp}, "layernorm")
    assert found["verdict"] == "holds"
    assert found["margin"]["verdict"] == "fails"       # 5% coupling, 1.5x RMSNorm
    assert found["measured"].endswith("margin target: fails")
    assert "With the margin target" in found["why"]


# ------------------------------------------------------------------ the seed's 0.6%

def d_model_sweep(point: dict, others: float = 5.0) -> dict:
    """The d_model sweep: the point at 256; the other sizes and the post rows at 256 carry
    an error that would fail the claim if read."""
    return lm_sweep("d_model", [64, 128, 256],
                    [dict(fn=others), dict(fn=others), {"d_model": 256, **point}],
                    post=dict(fn=others, d_model=256))


@pytest.mark.parametrize("point, expected", [
    (dict(fn=0.011, active=0.11), "holds"),       # <= 1.2% (0.6% within 2x)
    (dict(fn=0.013, active=0.11), "fails"),
    (dict(fn=0.011, active=0.14), "holds"),       # ~10% active: within 5 points
    (dict(fn=0.011, active=0.16), "partly"),      # right number, condition unmet
])
def test_seed_error_claim_takes_the_d_model_point_256(point, expected):
    found = claim({"sweeps": {"d_model": d_model_sweep(point)}}, "rms_error")
    assert found["verdict"] == expected
    assert found["numbers"]["frozen-norm_ne"] == point["fn"]
    assert found["numbers"]["source"] == "d_model sweep point 256"


def test_seed_error_claim_falls_back_to_the_compare_pre_row():
    cmp = lm_compare({("rms", "pre"): dict(fn=0.011, active=0.1),
                      ("rms", "post"): dict(fn=5.0)})
    found = claim({"compare": cmp}, "rms_error")
    assert found["verdict"] == "partly"             # d_model 32, not the seed's 256
    assert "d_model 32, not 256" in found["why"]
    cmp["table"][2]["d_model"] = 256                # the rms/pre row
    assert claim({"compare": cmp}, "rms_error")["verdict"] == "holds"
    sweep = lm_sweep("d_model", [64, 128], [dict(fn=5.0), dict(fn=5.0)])   # no 256 point
    both = claim({"compare": cmp, "sweeps": {"d_model": sweep}}, "rms_error")
    assert both["verdict"] == "holds" and both["numbers"]["source"] == "compare, rms/pre"


# ------------------------------------------------------------------ held-out loss

def losses(values: dict, std: float = 0.0, seeds: int = 1) -> dict:
    """A comparison whose rows have these mean held-out losses (norm/position -> nats)."""
    return lm_compare({tuple(k.split("/")): dict(loss=v, loss_std=std, seeds=seeds)
                       for k, v in values.items()})


def all_at(none: float, rms: float, layer: float) -> dict:
    return {f"{n}/{p}": v for n, v in (("none", none), ("rms", rms), ("layer", layer))
            for p in ("pre", "post")}


@pytest.mark.parametrize("none, std, seeds, expected", [
    (3.30, 0.0, 1, "holds"),       # 0.10 nats above the best normalized (layer/pre, 3.20)
    (3.27, 0.04, 3, "fails"),      # 0.07 nats within 2 pooled sd = 0.08: not distinguishable
    (3.29, 0.04, 3, "holds"),      # 0.09 nats beyond 0.08
    (3.10, 0.0, 1, "fails"),       # no norm has the lower loss
])
def test_no_norm_loss_claim(none, std, seeds, expected):
    values = {"none/pre": none, "none/post": none, "rms/pre": 3.25, "rms/post": 3.26,
              "layer/pre": 3.20, "layer/post": 3.40}
    found = claim({"compare": losses(values, std, seeds)}, "no_norm_loss")
    assert found["verdict"] == expected
    assert found["numbers"]["best"] == "layer/pre"
    assert found["numbers"]["gap_nats"] == pytest.approx(none - 3.20)
    assert "nats" in found["measured"] and " pp" not in found["measured"]
    assert "lower held-out loss (nats) is better" in found["rule"]


@pytest.mark.parametrize("values, std, expected", [
    (all_at(3.3, 3.2, 3.1), 0.0, "holds"),         # better than none, worse than LayerNorm
    (all_at(3.3, 3.0, 3.1), 0.0, "partly"),        # better than both
    (all_at(3.1, 3.2, 3.0), 0.0, "fails"),         # worse than no norm
    (all_at(3.20, 3.17, 3.14), 0.05, "fails"),     # 0.03 from each, 2 pooled sd = 0.10
    (all_at(3.40, 3.20, 3.17), 0.05, "partly"),    # better than none, not from LayerNorm
])
def test_rms_between_in_loss(values, std, expected):
    found = claim({"compare": losses(values, std, seeds=3)}, "rms_between")
    assert found["verdict"] == expected


def test_rms_between_takes_each_norm_at_its_lowest_loss():
    values = {**all_at(3.3, 3.2, 3.1), "rms/post": 3.5, "layer/pre": 3.6}
    found = claim({"compare": losses(values)}, "rms_between")
    assert found["verdict"] == "holds"             # RMSNorm 3.2 (pre), LayerNorm 3.1 (post)
    assert "LayerNorm 3.1000 nats (post)" in found["measured"]


def test_the_loss_direction_decides(monkeypatch):
    """Mutation check: with "higher is better" the same tables give the opposite verdicts."""
    cmp = losses(all_at(3.3, 3.2, 3.1))
    assert claim({"compare": cmp}, "no_norm_loss")["verdict"] == "holds"
    monkeypatch.setattr(lm_claims, "LOSS", replace(stats.LOSS, higher=True))
    assert claim({"compare": cmp}, "no_norm_loss")["verdict"] == "fails"
    assert claim({"compare": cmp}, "rms_between")["verdict"] == "fails"


# ------------------------------------------------------------------ the sweeps

ACTIVES = [0.4, 0.2, 0.1, 0.05]                     # falling as the L1 penalty grows
L1 = [0.0, 1.0, 3.0, 10.0]


@pytest.mark.parametrize("fns, drifts, expected", [
    ([0.4, 0.2, 0.1, 0.05], [0.4, 0.2, 0.1, 0.05], "holds"),   # error falls with activity
    ([0.4, 0.5, 0.4, 0.5], [0.4, 0.2, 0.1, 0.05], "partly"),   # only the norm drift does
    ([0.6, 0.8, 0.9, 0.95], [0.01, 0.02, 0.03, 0.04], "fails"),  # error grows with L1
])
def test_sparsity_claim(fns, drifts, expected):
    rows = [dict(active=a, fn=f, drift=d) for a, f, d in zip(ACTIVES, fns, drifts, strict=True)]
    sweep = lm_sweep("sparsity", L1, rows, post=dict(fn=0.5, drift=0.5, active=0.1))
    assert claim({"sweeps": {"sparsity": sweep}}, "sparsity")["verdict"] == expected


def test_sparsity_claim_partly_when_only_the_penalty_tracks_the_error():
    rows = [dict(active=a, fn=f, drift=0.001) for a, f in
            ((0.13, 1.9), (0.035, 0.17), (0.04, 0.05), (0.095, 0.033))]
    found = claim({"sweeps": {"sparsity": lm_sweep("sparsity", L1, rows)}}, "sparsity")
    assert found["verdict"] == "partly" and "L1 penalty" in found["why"]


@pytest.mark.parametrize("fns, drifts, expected", [
    ([0.8, 0.4, 0.2, 0.1], [0.8, 0.4, 0.2, 0.1], "holds"),
    ([0.1, 0.2, 0.4, 0.8], [0.1, 0.2, 0.4, 0.8], "fails"),
    ([0.4, 0.5, 0.4, 0.5], [0.8, 0.4, 0.2, 0.1], "partly"),   # only the norm drift falls
    ([0.5, 0.3, 0.4, 0.35], [0.1, 0.2, 0.4, 0.8], "partly"),  # rank corr 0.4 >= 0.35
])
def test_d_model_claim(fns, drifts, expected):
    rows = [dict(fn=f, drift=d) for f, d in zip(fns, drifts, strict=True)]
    sweep = lm_sweep("d_model", [64, 128, 256, 512], rows, post=dict(fn=0.3, drift=0.3))
    assert claim({"sweeps": {"d_model": sweep}}, "d_model")["verdict"] == expected


@pytest.mark.parametrize("deep, expected", [(0.049, "holds"), (0.051, "partly"),
                                            (0.149, "partly"), (0.151, "fails")])
def test_compounding_claim(deep, expected):
    sweep = lm_sweep("depth", [1, 2, 4], [dict(drift=0.001), dict(drift=0.01),
                                          dict(drift=deep)], post=dict(drift=0.9))
    assert claim({"sweeps": {"depth": sweep}}, "compounding")["verdict"] == expected


# ------------------------------------------------------------------ pre vs post

@pytest.mark.parametrize("over, expected", [
    ({("rms", "post"): dict(fn=0.10), ("rms", "pre"): dict(fn=0.20)}, "holds"),
    ({("rms", "post"): dict(fn=0.10), ("rms", "pre"): dict(fn=0.11)}, "fails"),
    ({("rms", "post"): dict(fn=0.10, frozen=0.1), ("rms", "pre"): dict(fn=0.11, frozen=0.9)},
     "fails"),                                       # only the frozen mode differs
    ({("rms", "post"): dict(fn=0.10), ("rms", "pre"): dict(fn=0.11),
      ("layer", "post"): dict(fn=0.1), ("layer", "pre"): dict(fn=0.3)}, "partly"),
    ({("rms", "post"): dict(fn=0.10, live=0.05), ("rms", "pre"): dict(fn=0.11, live=0.2)},
     "partly"),
])
def test_position_claim(over, expected):
    assert claim({"compare": lm_compare(over)}, "position")["verdict"] == expected


def test_position_claim_noise():
    # 3 seeds, sd 0.05 each: 2 pooled sd = 0.10; 0.10 apart is within it, 0.11 beyond
    def over(pre: float) -> dict:
        return {("rms", "post"): {"fn": 0.10, "frozen-norm.ne_std": 0.05},
                ("rms", "pre"): {"fn": pre, "frozen-norm.ne_std": 0.05}}
    assert claim({"compare": lm_compare(over(0.20), seeds=3)}, "position")["verdict"] == "fails"
    assert claim({"compare": lm_compare(over(0.21), seeds=3)}, "position")["verdict"] == "holds"


# ------------------------------------------------------------------ attention vs norms

@pytest.mark.parametrize("parts, expected", [
    (dict(drift=0.5, attn=0.1, frozen=0.5, fn=0.5), "holds"),    # norms larger, release no help
    (dict(drift=0.1, attn=0.5, frozen=0.5, fn=0.5), "fails"),    # the pattern change larger
    (dict(drift=0.3, attn=0.3, frozen=0.6, fn=0.2), "fails"),    # releasing the patterns helps
    (dict(drift=0.3, attn=0.24, frozen=0.5, fn=0.5), "partly"),  # 20% apart: same order
    (dict(drift=0.5, attn=0.1, frozen=0.6, fn=0.2), "partly"),   # the two measures disagree
])
def test_attention_vs_norms_claim(parts, expected):
    cmp = lm_compare({("rms", "pre"): parts,
                      ("rms", "post"): dict(drift=0.1, attn=0.9, frozen=0.9, fn=0.1)})
    found = claim({"compare": cmp}, "attention_vs_norms")
    assert found["verdict"] == expected
    assert found["numbers"]["ne_attention"] == parts["attn"]


def test_attention_vs_norms_noise_and_cancellation():
    # 0.2 apart; 3 seeds with sd 0.1: 2 pooled sd = 0.2, not beyond it
    noisy = {"drift": 0.5, "attn": 0.3, "frozen": 0.5, "fn": 0.5, "drift.ne_drift_std": 0.1,
             "drift.ne_attention_std": 0.1}
    found = claim({"compare": lm_compare({("rms", "pre"): noisy}, seeds=3)},
                  "attention_vs_norms")
    assert found["verdict"] == "partly"
    found = claim({"compare": lm_compare({("rms", "pre"): {**noisy, "drift": 0.51}}, seeds=3)},
                  "attention_vs_norms")
    assert found["verdict"] == "holds"                        # 0.21 apart: beyond 0.2
    worse = dict(drift=0.5, attn=0.1, frozen=0.3, fn=0.6)     # releasing makes it larger
    found = claim({"compare": lm_compare({("rms", "pre"): worse})}, "attention_vs_norms")
    assert found["verdict"] == "holds"
    assert "Releasing the patterns makes the error larger" in found["why"]


def test_attention_vs_norms_margin():
    row = dict(drift=0.5, attn=0.1, frozen=0.5, fn=0.5,
               margin=dict(drift=0.1, attn=0.5))
    found = claim({"compare": lm_compare({("rms", "pre"): row})}, "attention_vs_norms")
    assert (found["verdict"], found["margin"]["verdict"]) == ("holds", "fails")


# ------------------------------------------------------------------ distance p - t

@pytest.mark.parametrize("fn, live, expected", [
    ([0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.1, 0.1, 0.1, 0.1], "holds"),
    ([0.3, 0.1, 0.3, 0.1, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5], "partly"),   # only live grows
    ([0.1, 0.3, 0.2, 0.15, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1], "partly"),  # rank corr 0.6
    ([0.5, 0.4, 0.3, 0.2, 0.1], [0.5, 0.4, 0.3, 0.2, 0.1], "fails"),
])
def test_distance_claim(fn, live, expected):
    cmp = lm_compare({("rms", "pre"): dict(distance=fn, live_distance=live),
                      ("rms", "post"): dict(distance=[0.1, 0.2, 0.3, 0.4, 0.5])})
    found = claim({"compare": cmp}, "distance")
    assert found["verdict"] == expected
    assert found["numbers"]["distance"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert found["margin"]["verdict"] == "not measured"      # margin rows carry no distances


def test_distance_claim_sorts_and_needs_three_distances():
    row = dict(distance=[0.1, 0.2, 0.3, 0.4], live_distance=[0.1] * 4)
    cmp = lm_compare({("rms", "pre"): row})
    pairs = cmp["table"][2]["frozen-norm.ne_by_distance"]
    cmp["table"][2]["frozen-norm.ne_by_distance"] = pairs[::-1]        # any order
    assert claim({"compare": cmp}, "distance")["verdict"] == "holds"
    short = lm_compare({("rms", "pre"): dict(distance=[0.1, 0.2])})
    assert claim({"compare": short}, "distance")["verdict"] == "not measured"
    assert claim({"compare": lm_compare()}, "distance")["verdict"] == "not measured"


# ------------------------------------------------------------------ claim 11 on text

def faith(overlap: float) -> dict:
    ks = [1, 2, 4, 8, 16]
    return {"ks": ks, "direct_share_total_mean": 1.0,
            "last_layer": {"frozen_ne_mean": [0.3] * 5, "live_ne_mean": [0.31] * 5,
                           "stability": {"ks": [1, 4, 16], "overlap_mean": [overlap] * 3}}}


def test_features_claim_on_the_text_records():
    records = [{"dataset": d, "norm": n, "position": p, "seed": 0,
                "faithfulness": faith(0.99 if d == "text" else 0.5)}
               for d in ("text", "synthetic-lm") for n, p in CONFIGS]
    found = claim({"decomposition": {"records": records}}, "features_intact")
    assert found["verdict"] == "holds"              # text's eigenvectors are stable
    other = [r for r in records if r["dataset"] == "synthetic-lm"]
    assert claim({"decomposition": {"records": other}}, "features_intact")["verdict"] == "fails"
    assert claim({}, "features_intact")["verdict"] == "not measured"


# ------------------------------------------------------------------ missing data

IDS = ["layernorm", "rms_error", "no_norm_loss", "rms_between", "sparsity", "d_model",
       "compounding", "position", "attention_vs_norms", "distance", "features_intact"]


def test_nothing_measured():
    for lm in ({}, {"compare": None, "sweeps": None, "decomposition": None},
               {"compare": {"table": []}}):
        out = evaluate_lm_claims(lm)
        assert [c["id"] for c in out] == IDS
        assert {c["verdict"] for c in out} == {"not measured"}
        assert all("--kind transformer" in c["why"] or "sweep-lm-" in c["why"]
                   or "decompose" in c["why"] for c in out)


def test_missing_columns_are_not_measured_never_a_crash():
    bare = {"table": [{"norm": n, "position": p, "n_seeds": 1, "test_loss": 3.0 + i / 10}
                      for i, (n, p) in enumerate(CONFIGS)]}
    by_id = {c["id"]: c["verdict"] for c in evaluate_lm_claims({"compare": bare})}
    assert by_id.pop("no_norm_loss") != "not measured"      # the losses are there
    assert by_id.pop("rms_between") != "not measured"
    assert set(by_id.values()) == {"not measured"}
    nan = lm_compare(frozen=math.nan, fn=math.nan, drift=math.nan)
    assert claim({"compare": nan}, "layernorm")["verdict"] == "not measured"
    sweeps = {"d_model": lm_sweep("d_model", [64, 128], [{}, {}]),
              "depth": lm_sweep("depth", [1], [{}]), "sparsity": lm_sweep("sparsity", [], [])}
    by_id = {c["id"]: c["verdict"] for c in evaluate_lm_claims({"sweeps": sweeps})}
    assert by_id["d_model"] == by_id["compounding"] == by_id["sparsity"] == "not measured"


def test_no_margin_columns_leave_the_margin_not_measured():
    cmp = lm_compare(no_margin=True)
    for c in evaluate_lm_claims({"compare": cmp}):
        if "margin" in c and c["verdict"] != "not measured":
            assert c["margin"]["verdict"] == "not measured", c["id"]
            assert c["measured"].endswith("margin target: not measured")


# ------------------------------------------------------------------ the real output

def rank_corr(xs: list, ys: list) -> float:
    """Spearman by the definition (no ties in these data): 1 - 6 sum d^2 / (n (n^2 - 1))."""
    rank = lambda v: {x: i for i, x in enumerate(sorted(v))}            # noqa: E731
    rx, ry = rank(xs), rank(ys)
    n = len(xs)
    d2 = sum((rx[x] - ry[y]) ** 2 for x, y in zip(xs, ys, strict=True))
    return 1 - 6 * d2 / (n * (n * n - 1))


def test_the_fixture_gives_the_verdicts_its_numbers_imply():
    """`compare_lm("synthetic-lm", seeds=1)`: each verdict follows from the numbers by the
    rule, checked here on the numbers first."""
    cmp = json.loads(FIXTURE.read_text())
    row = {(r["norm"], r["position"]): r for r in cmp["table"]}
    out = {c["id"]: c for c in evaluate_lm_claims({"compare": cmp})}
    assert {c["verdict"] for c in out.values()} <= VERDICTS
    ln, rms = row["layer", "pre"], row["rms", "pre"]
    assert ln["drift.ne_drift"] >= 0.10 and ln["frozen-norm.ne"] < 2 * rms["frozen-norm.ne"]
    assert out["layernorm"]["verdict"] == "partly"
    assert rms["frozen-norm.ne"] > 0.012 and out["rms_error"]["verdict"] == "fails"
    best = min((r for r in cmp["table"] if r["norm"] != "none"), key=lambda r: r["test_loss"])
    assert best["test_loss"] < row["none", "pre"]["test_loss"]           # 1 seed: the means
    assert out["no_norm_loss"]["verdict"] == "holds"
    rms_loss = min(row["rms", p]["test_loss"] for p in ("pre", "post"))
    assert rms_loss > row["none", "pre"]["test_loss"]
    assert out["rms_between"]["verdict"] == "fails"
    post = row["rms", "post"]["frozen-norm.ne"]
    assert (post - rms["frozen-norm.ne"]) / post < 0.25
    assert out["position"]["verdict"] in ("fails", "partly")
    d, a = rms["drift.ne_drift"], rms["drift.ne_attention"]
    f, fn = rms["frozen.ne"], rms["frozen-norm.ne"]
    assert (d - a) / d < 0.25 and fn > f                  # same order; releasing: no help
    assert out["attention_vs_norms"]["verdict"] == "partly"
    dist = rms["frozen-norm.ne_by_distance"]
    assert rank_corr([p[0] for p in dist], [p[1] for p in dist]) < 0.35
    assert out["distance"]["verdict"] in ("fails", "partly")
    for cid in ("sparsity", "d_model", "compounding", "features_intact"):
        assert out[cid]["verdict"] == "not measured"
    assert all(c["margin"]["verdict"] in VERDICTS for c in out.values() if "margin" in c)


def test_the_fixture_recommendation():
    """Lowest loss layer/pre (3.2921 nats); within 0.01 nats: no norm, rms/pre, layer/post;
    of these, layer/pre's renorm NE (7.9%) is the lowest of any mode."""
    rec = recommend_lm(json.loads(FIXTURE.read_text()))
    assert (rec["norm"], rec["position"], rec["mode"]) == ("layer", "pre", "renorm")
    assert all(isinstance(t, str) and t for t in rec["text"])


# ------------------------------------------------------------------ the recommendation

def rec_table(**layer_post) -> dict:
    """Lowest loss layer/pre (3.000); rms/pre 0.009 nats above with renorm NE 2%; rms/post
    0.011 above, the most faithful (renorm 0.1%); no norm far behind."""
    return lm_compare({("layer", "pre"): dict(loss=3.000, renorm=0.2, live=0.3),
                       ("rms", "pre"): dict(loss=3.009, renorm=0.02, live=0.05),
                       ("rms", "post"): dict(loss=3.011, renorm=0.001, live=0.01),
                       ("layer", "post"): dict(loss=3.5, **layer_post),
                       ("none", "pre"): dict(loss=3.6), ("none", "post"): dict(loss=3.6)})


def test_recommend_lm_prefers_the_faithful_among_the_good():
    rec = recommend_lm(rec_table())
    assert (rec["norm"], rec["position"], rec["mode"]) == ("rms", "pre", "renorm")
    assert rec["expected_ne"] == 0.02 and rec["loss_tolerance"] == 0.01
    assert any("rms/post" in t and "worse" in t for t in rec["text"])   # the faithful one
    assert "3.0090 nats" in rec["text"][0]
    # 3 seeds with sd 0.01: 2 pooled sd = 0.02 nats, so rms/post counts as good and wins
    noisy = rec_table()
    for row in noisy["table"]:
        row["n_seeds"], row["test_loss_std"] = 3, 0.01
    assert recommend_lm(noisy)["position"] == "post"


def test_recommend_lm_ties_prefer_the_exact_gradient():
    """Without a norm frozen-norm, live and renorm coincide: a tie recommends live."""
    cmp = lm_compare({("none", p): dict(loss=2.0, fn=0.05, live=0.05, renorm=0.05, frozen=0.3)
                      for p in ("pre", "post")})
    rec = recommend_lm(cmp)
    assert rec["norm"] == "none" and rec["mode"] == "live"
    assert any("If the network needs a norm" in t for t in rec["text"])
    assert any("they tie in 2" in t for t in rec["text"])
    assert recommend_lm({"table": []}) == {"text": [NOTHING]}


def test_the_recommendation_direction_decides(monkeypatch):
    """Mutation check: with higher-is-better the worst loss (no norm, 3.6) is chosen."""
    monkeypatch.setattr(recommend, "LOSS", replace(stats.LOSS, higher=True))
    assert recommend_lm(rec_table())["norm"] == "none"


def rec(norm: str, position: str, mode: str, ne: float, **extra) -> dict:
    return {"norm": norm, "position": position, "mode": mode, "config": f"{norm}/{position}",
            "expected_ne": ne, "test_accuracy": 0.98, "test_loss": 3.1, "text": [], **extra}


def test_combine_agree_and_disagree():
    both = combine(rec("rms", "pre", "live", 0.01), rec("rms", "pre", "live", 0.10))
    assert both["agree"] is True and both["mode"] == {"mlp": "live", "lm": "live",
                                                      "agree": True}
    assert both["text"][0].startswith("Both families agree: norm=rms, position=pre, mode=live")
    assert any("10.0x the MLP's expected NE" in t for t in both["text"])
    mode = combine(rec("rms", "pre", "live", 0.01), rec("rms", "pre", "renorm", 0.10))
    assert mode["agree"] is False and mode["norm"]["agree"] and not mode["mode"]["agree"]
    assert mode["text"][0].startswith("The families agree on norm=rms, position=pre and differ "
                                      "on mode (MLP live, language model renorm)")
    every = combine(rec("rms", "post", "live", 0.01), rec("layer", "pre", "renorm", 0.005))
    assert every["text"][0].startswith("The families differ on norm (MLP rms, language model "
                                       "layer) and position (MLP post, language model pre) "
                                       "and mode")
    assert any("smaller error on language models: 0.5x" in t for t in every["text"])
    # without a norm there is one network in both positions: the position does not count
    moot = combine(rec("none", "post", "live", 0.01), rec("none", "pre", "live", 0.01))
    assert moot["agree"] is True and moot["position"]["agree"] is None
    assert moot["text"][0].startswith("Both families agree: norm=none, mode=live (")
    apart = combine(rec("none", "post", "live", 0.01), rec("rms", "pre", "live", 0.01))
    assert apart["agree"] is False and "position" not in apart["text"][0].split("(")[0]
    missing = combine(rec("rms", "pre", "live", 0.01), {"text": [NOTHING]})
    assert missing["agree"] is False and "language-model" in missing["text"][0]


# ------------------------------------------------------------------ build and collect

def test_build_and_collect_carry_the_language_models(tmp_path):
    cmp = json.loads(FIXTURE.read_text())
    (tmp_path / "compare-lm.json").write_text(json.dumps(cmp))
    sweep = lm_sweep("d_model", [64, 128, 256], [dict(fn=0.4), dict(fn=0.2), dict(fn=0.1)])
    (tmp_path / "sweep-lm-d_model.json").write_text(json.dumps(sweep))
    demo = ROOT / "docs" / "data" / "demo"
    results = collect(demo, tmp_path)
    assert results["sweeps"]["d_model"] == json.loads((demo / "sweep-d_model.json").read_text())
    assert results["lm"]["sweeps"]["d_model"] == sweep
    out = build(results)
    assert out["claims"] == build(collect(demo))["claims"]              # the MLP's unchanged
    by_id = {c["id"]: c["verdict"] for c in out["lm"]["claims"]}
    assert by_id["d_model"] == "holds"
    assert out["lm"]["recommendation"]["mode"] == "renorm"
    mlp, lm = out["recommendation"], out["lm"]["recommendation"]
    assert out["combined"]["agree"] == all(mlp[f] == lm[f] for f in ("norm", "position", "mode"))
    assert "lm" not in build(collect(demo)) and "combined" not in build(collect(demo))
    alone = build({"lm": {"sweeps": {}}})
    assert alone["lm"]["recommendation"] == {"text": [NOTHING]} and "combined" not in alone


def test_the_docs_print_what_lm_claims_computes():
    """docs/lm-verification.md's claims table, every claim's sentence and rule, and the
    recommendation are `evaluate_lm_claims` / `recommend_lm` on the committed comparison."""
    from test_docs_verdicts import _section, _table

    from bilens.report.tables import claims_rows

    page = (ROOT / "docs" / "lm-verification.md").read_text()
    section = _section(page, "## The seed's claims on language models")
    out = build(collect(FIXTURE.parent))
    claims = out["lm"]["claims"]
    _, rows = claims_rows(claims)
    shown = _table(section)
    assert len(shown) == len(rows) == len(IDS)
    for got, want, c in zip(shown, rows, claims, strict=True):
        assert got == [*want, c.get("margin", {}).get("verdict", "-").upper()], want[0]
    for i, c in enumerate(claims):
        assert f"**{i + 1}. {c['claim']}: {c['verdict']}.**" in section
        assert f"_Rule: {c['rule']}._" in section
    for line in out["lm"]["recommendation"]["text"]:
        assert f"- {line}" in section

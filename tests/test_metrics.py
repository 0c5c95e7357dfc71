"""SPEC §5 metrics on small hand-made cases whose answers are worked out by hand here."""

import math

import pytest
import torch

from bilens.analysis.metrics import (
    decompose,
    error_decomposition,
    evaluate,
    normalized_error,
    pearson,
    sign_agreement,
    spearman,
    topk_recall,
)
from bilens.report.tables import metrics_table

nan = math.nan
T = torch.tensor


def test_normalized_error_by_hand():
    # |1-1| + |2-1| + |-3+2| = 2 over |1| + |1| + |-2| = 4
    assert normalized_error(T([1.0, 2.0, -3.0]), T([1.0, 1.0, -2.0])) == pytest.approx(0.5)
    assert normalized_error(T([1.0, 2.0]), T([1.0, 2.0])) == 0.0


def test_nan_pairs_are_ignored():
    p = T([1.0, 2.0, -3.0, 5.0, nan])
    a = T([1.0, 1.0, -2.0, nan, 1.0])
    assert normalized_error(p, a) == pytest.approx(0.5)
    assert pearson(p, a) == pytest.approx(pearson(p[:3], a[:3]))
    assert math.isnan(normalized_error(T([nan]), T([nan])))
    assert math.isnan(normalized_error(T([1.0]), T([0.0])))        # sum|a| = 0


def test_pearson_by_hand():
    # p - mean = (-1, 0, 1); a - mean = (-7/3, -1/3, 8/3): cov 5, var_p 2, var_a 114/9
    expected = 5 / math.sqrt(2 * 114 / 9)
    assert pearson(T([1.0, 2.0, 3.0]), T([2.0, 4.0, 7.0])) == pytest.approx(expected)
    assert pearson(T([1.0, 2.0, 3.0]), T([-2.0, -4.0, -6.0])) == pytest.approx(-1.0)
    assert math.isnan(pearson(T([1.0, 1.0, 1.0]), T([1.0, 2.0, 3.0])))   # constant side
    assert math.isnan(pearson(T([1.0]), T([1.0])))


def test_spearman_by_hand():
    # ranks of a: (1, 3, 2, 4); d = (0, -1, 1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(T([1.0, 2.0, 3.0, 4.0]), T([10.0, 30.0, 20.0, 40.0])) == pytest.approx(0.8)
    # monotone but not linear: rank correlation 1
    assert spearman(T([1.0, 2.0, 3.0]), T([1.0, 10.0, 1000.0])) == pytest.approx(1.0)
    assert math.isnan(spearman(T([1.0, 2.0]), T([3.0, 3.0])))


def test_topk_recall_by_hand():
    p = T([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    a = T([[3.0, 1.0, 2.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    # k=2: row 0 top|a| {0, 2}, top|p| {0, 1} -> 1/2; row 1 {0, 1} vs {2, 3} -> 0
    assert topk_recall(p, a, 2) == pytest.approx(0.25)
    # k=1: row 0 hit, row 1 miss
    assert topk_recall(p, a, 1) == pytest.approx(0.5)
    # k beyond the channels: every channel is in both sets
    assert topk_recall(p, a, 10) == pytest.approx(1.0)
    # signs do not matter, magnitudes do
    assert topk_recall(-p, a, 2) == pytest.approx(0.25)


def test_topk_recall_nan_handling():
    # channel 0 was not ablated: its large |p| must not take a slot
    p = T([[5.0, 1.0, 2.0]])
    a = T([[nan, 1.0, 2.0]])
    assert topk_recall(p, a, 1) == pytest.approx(1.0)
    # a row with nothing ablated is skipped, not counted as 0
    p2 = torch.cat([p, T([[1.0, 2.0, 3.0]])])
    a2 = torch.cat([a, T([[nan, nan, nan]])])
    assert topk_recall(p2, a2, 1) == pytest.approx(1.0)
    assert math.isnan(topk_recall(T([[1.0]]), T([[nan]]), 1))
    with pytest.raises(ValueError):
        topk_recall(p, a, 0)


def test_sign_agreement_by_hand():
    # median |a| = (0.2 + 3) / 2 = 1.6: upper half {4, -3}; p's signs (+, +): one of two
    a = T([4.0, -3.0, 0.1, 0.2])
    p = T([1.0, 1.0, -1.0, -1.0])
    assert sign_agreement(p, a) == pytest.approx(0.5)
    # odd count: median 2, upper half {2, 3}, both agree; the disagreeing small one is out
    assert sign_agreement(T([-1.0, 2.0, 3.0]), T([1.0, 2.0, 3.0])) == pytest.approx(1.0)
    # zero actual effects carry no sign
    assert math.isnan(sign_agreement(T([1.0, -1.0]), T([0.0, 0.0])))
    assert sign_agreement(T([1.0, nan, -1.0]), T([2.0, -5.0, nan])) == pytest.approx(1.0)


def test_evaluate_groups():
    p = torch.zeros(2, 3, 4)
    a = torch.ones(2, 3, 4)
    a[:, 2] = nan                                       # layer 2 not ablated
    p[0, 0, 0] = 1.0                                    # one exact prediction
    m = evaluate(p, a, ks=(1,))
    assert m["overall"]["n"] == 16
    assert m["overall"]["normalized_error"] == pytest.approx(15 / 16)
    assert len(m["per_layer"]) == 3 and m["per_layer"][2]["n"] == 0
    assert math.isnan(m["per_layer"][2]["normalized_error"])
    assert m["per_layer"][0]["normalized_error"] == pytest.approx(7 / 8)
    assert m["per_input"]["normalized_error"] == pytest.approx([7 / 8, 1.0])


def test_drift_plus_gating_is_the_total_error():
    g = torch.Generator().manual_seed(0)
    p, a, af = (torch.randn(5, 3, 7, generator=g, dtype=torch.float64) for _ in range(3))
    parts = decompose(p, a, af)
    torch.testing.assert_close(parts["drift"] + parts["gating"], parts["total"],
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(parts["total"], a - p, rtol=0, atol=0)


def test_error_decomposition_shares_by_hand():
    a, af, p = T([[[2.0, -1.0]]]), T([[[1.5, -1.0]]]), T([[[1.0, -2.0]]])
    # drift |0.5| + |0| = 0.5; gating |0.5| + |1| = 1.5; total |1| + |1| = 2; sum|a| = 3
    d = error_decomposition(p, a, af)["overall"]
    assert d["normalized_error"] == pytest.approx(2 / 3)
    assert d["drift_ne"] == pytest.approx(0.5 / 3)
    assert d["gating_ne"] == pytest.approx(1.5 / 3)
    assert d["drift_share"] == pytest.approx(0.25)
    assert d["gating_share"] == pytest.approx(0.75)
    # NaN pairs (not ablated) drop out of every sum
    a2 = torch.cat([a, T([[[nan, 7.0]]])])
    d2 = error_decomposition(torch.cat([p, T([[[1.0, 7.0]]])]), a2,
                             torch.cat([af, T([[[nan, 7.0]]])]))["overall"]
    assert d2["drift_ne"] == pytest.approx(0.5 / 10)


def test_format_table_prints_nan_and_numbers():
    p = torch.randn(3, 2, 5)
    m = {"modes": {"frozen": {**evaluate(p, p.clone(), ks=(2,)),
                              "decomposition": error_decomposition(p, p, p)}}}
    m["modes"]["frozen"]["per_layer"][1]["pearson"] = nan
    text = metrics_table(m)
    assert "frozen all" in text and "frozen 1" in text and "nan" in text
    assert "NE %" in text and "0.00" in text                 # exact predictions: NE 0 %

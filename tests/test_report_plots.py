"""The report's figures read as the tables do (issue 12, item 20): each figure is drawn,
then inspected as matplotlib objects instead of PNG bytes."""

from __future__ import annotations

import math

import pytest
from test_claims import fake_compare, fake_sweep
from test_report import fake_results

from bilens import report
from bilens.report import plots


@pytest.fixture
def figures(monkeypatch):
    """The plot functions return their figure instead of PNG bytes."""
    monkeypatch.setattr(plots, "_png", lambda plt, fig: fig)
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _lines(ax):
    return [ln for ln in ax.get_lines() if len(ln.get_xdata())]


def _legend_texts(ax):
    texts = []
    for child in [*ax.get_children(), ax.get_legend()]:
        if child is not None and hasattr(child, "get_texts"):
            texts += [t.get_text() for t in child.get_texts()]
    return texts


def test_seed_estimate_is_drawn_against_the_median_drift(figures):
    rows = [dict(ds=0.0035, **{"drift.ds_over_s_median": 7.6e-4,
                               "drift.seed_estimate": 7.7e-4}) for _ in range(3)]
    fig = plots.plot_sweep(fake_sweep("d_model", [64, 128, 256], rows))
    ax2 = fig.axes[1]
    by_style = {ln.get_linestyle(): ln for ln in _lines(ax2)}
    assert list(by_style["-"].get_ydata()) == pytest.approx([0.076] * 3)    # median, in %
    assert list(by_style[":"].get_ydata()) == pytest.approx([0.077] * 3)    # the estimate
    assert list(by_style["--"].get_ydata()) == pytest.approx([0.35] * 3)    # mean, faint
    assert by_style["--"].get_alpha() < 1
    assert "seed estimate (tracks the median)" in _legend_texts(ax2)
    assert "%" in ax2.get_ylabel()


def test_errors_in_percent_with_the_5_percent_line_labelled(figures):
    fig = plots.plot_sweep(fake_sweep("d_model", [64, 128, 256],
                                      [dict(ne=0.4), dict(ne=0.2), dict(ne=0.1)]))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "(%)" in ax.get_ylabel()
    frozen = next(ln for ln in _lines(ax) if ln.get_linestyle() == "-")
    assert list(frozen.get_ydata()) == pytest.approx([40.0, 20.0, 10.0])     # 0.4 -> 40%
    five = [ln for ln in ax.get_lines() if list(ln.get_ydata()) == [5.0, 5.0]]
    assert five and five[0].get_linestyle() == ":"
    assert "5% (small error)" in _legend_texts(ax)
    cmp = plots.plot_compare(fake_compare())
    assert "(%)" in cmp.axes[0].get_ylabel()
    assert any(list(ln.get_ydata()) == [5.0, 5.0] for ln in cmp.axes[0].get_lines())


def test_drift_part_is_drawn_above_frozen_and_distinct(figures):
    fig = plots.plot_sweep(fake_sweep("d_model", [64, 128, 256],
                                      [dict(ne=0.4, drift=0.39)] * 3))
    lines = _lines(fig.axes[0])
    frozen = next(ln for ln in lines if ln.get_linestyle() == "-")
    drift = next(ln for ln in lines if ln.get_linestyle() == ":" and ln.get_marker() == "o")
    assert drift.get_zorder() > frozen.get_zorder()
    assert drift.get_markerfacecolor() == "none" and drift.get_linewidth() > frozen.get_linewidth()


def test_position_sweep_legend_stays_off_the_data_and_ticks_at_layers(figures):
    variants = (("rms", "post"), ("rms", "pre"), ("layer", "post"), ("layer", "pre"))
    sweep = fake_sweep("position", [1, 3], [dict(ne=0.1), dict(ne=0.3)], variants=variants)
    fig = plots.plot_sweep(sweep)
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [1, 3]                  # no 1.25 "layers"
        legend = ax.get_legend()
        # outside the axes, to the right, and short: one entry per line style
        assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.bbox.x1 - 1
        assert len(legend.get_texts()) <= 6
    colors = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert colors == ["layer/post", "layer/pre", "rms/post", "rms/pre"]   # once, below


def test_no_norm_is_one_network_and_shown_once(figures):
    cmp = fake_compare()
    header, rows = report.compare_rows(cmp["table"])
    none = [r for r in rows if r[0] == "none"]
    assert len(none) == 1 and none[0][1] == "post = pre"
    fig = plots.plot_compare(cmp)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels.count("none/post = pre") == 1 and len(labels) == 5
    # two different no-norm networks (other numbers) are both shown
    cmp["table"][1]["test_accuracy"] = 0.5
    assert sum(r[0] == "none" for r in report.compare_rows(cmp["table"])[1]) == 2


def test_position_sweep_text_says_what_varies():
    results = fake_results()
    sweep = results["sweeps"]["position"]
    sweep["settings"].update(label="depth (layers)", variants=[["rms", "post"], ["rms", "pre"]])
    line = report.settings_line(sweep["settings"])
    assert "Varied: depth (layers) (`model.position`) over 1, 3, for each norm x position " \
           "(rms/post, rms/pre)" in line


def test_decomposition_figures_are_in_percent(figures, monkeypatch):
    from bilens.report import decomposition

    monkeypatch.setattr(decomposition, "_png", lambda fig: fig)
    faith = {"ks": [1, 2, 4], "layers": {"0": {"recon_ne_mean": [0.5, 0.2, 0.0]}},
             "last_layer": {"layer": 0, "frozen_ne_mean": [0.5, 0.2, 0.0],
                            "live_ne_mean": [0.4, 0.2, 0.0], "gap_ne_mean": [0.1, 0.0, 0.0]}}
    fig = decomposition.plot_faithfulness(faith)
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [50.0, 20.0, 0.0]
    assert "%" in fig.axes[0].get_ylabel()
    assert not math.isnan(fig.axes[1].get_lines()[0].get_ydata()[0])

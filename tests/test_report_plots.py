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


@pytest.fixture
def lm_figures(monkeypatch):
    """The LM plot functions return their figure instead of PNG bytes."""
    from bilens.report import lm_plots

    monkeypatch.setattr(lm_plots, "_png", lambda plt, fig: fig)
    yield lm_plots
    import matplotlib.pyplot as plt

    plt.close("all")


def test_lm_bars_are_the_tables_numbers(lm_figures):
    from test_report import lm_compare

    from bilens.report.tables import merge_none

    cmp = lm_compare()
    table = merge_none(cmp["table"])
    modes = report.lm_tables.lm_modes_in(table)
    ax = lm_figures.plot_lm_compare(cmp).axes[0]
    bars = [list(c) for c in ax.containers]
    assert len(bars) == len(modes) and ax.get_yscale() == "log"
    for mode, container in zip(modes, bars, strict=True):
        assert [b.get_height() for b in container] == pytest.approx(
            [100 * r[f"{mode}.ne"] for r in table])
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "none/post = pre"
    # several seeds: the sd is drawn as the spread
    three = {**cmp, "table": [{**r, "n_seeds": 3, "frozen.ne_std": 0.05} for r in cmp["table"]]}
    from matplotlib.container import ErrorbarContainer

    ax = lm_figures.plot_lm_compare(three).axes[0]
    (spread,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]   # frozen's
    tops = [seg[1][1] for seg in spread.lines[2][0].get_segments()]
    assert tops == pytest.approx([100 * r["frozen.ne"] + 5 for r in table])


def test_lm_split_stacks_the_three_parts(lm_figures):
    from test_report import lm_compare

    from bilens.report.tables import merge_none

    cmp = lm_compare()
    table = merge_none(cmp["table"])
    fig = lm_figures.plot_lm_split(cmp)
    assert len(fig.axes) == 2                                 # next and the margin
    drift, attention, gating = (list(c) for c in fig.axes[0].containers)
    for i, r in enumerate(table):
        assert drift[i].get_height() == pytest.approx(100 * r["drift.ne_drift"])
        assert attention[i].get_y() == pytest.approx(100 * r["drift.ne_drift"])
        assert gating[i].get_y() + gating[i].get_height() == pytest.approx(100 * (
            r["drift.ne_drift"] + r["drift.ne_attention"] + r["drift.ne_gating"]))
    frozen = next(ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "D")
    assert list(frozen.get_ydata()) == pytest.approx([100 * r["frozen.ne"] for r in table])


def test_lm_distance_lines_are_the_tables(lm_figures):
    from test_report import lm_compare

    cmp = lm_compare()
    fig = lm_figures.plot_lm_distance(cmp)
    row = cmp["table"][2]                                      # rms/pre: panel 1 (none once)
    ax = fig.axes[1]
    assert ax.get_title() == "rms/pre"
    frozen = ax.get_lines()[0]
    assert list(frozen.get_xdata()) == [p[0] for p in row["frozen.ne_by_distance"]]
    assert list(frozen.get_ydata()) == pytest.approx(
        [100 * p[1] for p in row["frozen.ne_by_distance"]])
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert texts == ["frozen", "frozen-norm", "live", "renorm"]

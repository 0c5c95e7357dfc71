"""Every table bilens prints or writes: the rows of the comparison, sweep and claims tables
(strings, one list per row), their plain-text and Markdown forms, and the `verify` metrics
table. Numbers are written by `bilens.core.units`.

Example:
    >>> print(text_table(["a", "b"], [["1", "22"]]))
    a  b
    -  --
    1  22
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bilens.core.units import NE_UNIT, cell, fixed, pct, pct_cell, pm
from bilens.experiments.stats import modes_in, targets_in

if TYPE_CHECKING:
    from bilens.analysis.verify import VerifyResult


# ------------------------------------------------------------------ the experiments' rows


ONE_NETWORK = "post = pre"        # no norm: the position changes nothing, one network
NONE_NOTE = ("No norm is one network in both positions (the position only moves the norm), "
             "so it is shown once, as position \"post = pre\".")


def merge_none(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table with no norm's post and pre rows shown once (position `ONE_NETWORK`) when
    they are the same network, i.e. hold the same numbers."""
    none = [r for r in table if r.get("norm") == "none"]
    if len(none) != 2 or not all(
            _same(none[0].get(k), none[1].get(k)) for k in ("test_accuracy", "frozen.ne")):
        return list(table)
    out = []
    for r in table:
        if r is none[1]:
            continue
        out.append({**r, "position": ONE_NETWORK} if r is none[0] else r)
    return out


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-9)


def compare_rows(table: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (strings): the configured target's columns,
    then the NE of every mode for each extra target (`stats.EXTRA_TARGETS`: the margin);
    no norm once (`merge_none`)."""
    modes, extra = modes_in(table), targets_in(table)
    header = ["norm", "position", "seeds", "test acc %", *(f"NE {m}" for m in modes),
              *(f"Pearson {m}" for m in modes), *(f"top-10 {m}" for m in modes),
              "drift share", "gating share", *(f"{t}: NE {m}" for t in extra for m in modes)]
    rows = []
    for r in merge_none(table):
        share = r.get("drift.drift_share", math.nan)
        rows.append([r["norm"], r["position"], str(r.get("n_seeds", 1)),
                     pm(r["test_accuracy"], r.get("test_accuracy_std")
                        if r.get("n_seeds", 1) > 1 else None),
                     *(pct(r[f"{m}.ne"]) for m in modes),
                     *(fixed(r[f"{m}.pearson"]) for m in modes),
                     *(pct(r[f"{m}.top10"], 0) for m in modes),
                     pct(share, 0), pct(1 - share, 0) if math.isfinite(share) else "n/a",
                     *(pct(r.get(f"{t}.{m}.ne", math.nan)) for t in extra for m in modes)])
    return header, rows


def sweep_rows(sweep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a sweep's table."""
    modes = modes_in(sweep["table"])
    header = ["norm/pos", sweep.get("label", "x"), "test acc %", "active",
              *(f"NE {m}" for m in modes), "drift NE", "gating NE", "|ds/s|",
              *(f"top-10 {m}" for m in modes)]
    if sweep.get("name") == "depth":
        header.append("NE frozen per layer")
    rows = []
    for r in sweep["table"]:
        row = [f"{r['norm']}/{r['position']}", f"{r['x']:g}" if isinstance(r["x"], float)
               else str(r["x"]), pm(r["test_accuracy"], None), pct(r["active_fraction"]),
               *(pct(r[f"{m}.ne"]) for m in modes), pct(r["drift.ne_drift"]),
               pct(r["drift.ne_gating"]), pct(r["drift.ds_over_s"], 2),
               *(pct(r[f"{m}.top10"], 0) for m in modes)]
        if sweep.get("name") == "depth":
            row.append(" ".join(pct(v, 0) for v in r.get("frozen.ne_per_layer", [])))
        rows.append(row)
    return header, rows


def claims_rows(claims: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the claims table."""
    header = ["#", "claim", "the seed says", "measured", "verdict"]
    return header, [[str(i + 1), c["claim"], c["seed"], c["measured"], c["verdict"].upper()]
                    for i, c in enumerate(claims)]


# ------------------------------------------------------------------------- the formats


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]],
               wrap: dict[int, int] | None = None) -> str:
    """A plain-text table; columns listed in `wrap` ({index: width}) are word-wrapped."""
    wrap = wrap or {}
    cells = [[textwrap.wrap(str(c), wrap[i]) or [""] if i in wrap else [str(c)]
              for i, c in enumerate(row)] for row in [list(header), *rows]]
    widths = [max(len(line) for row in cells for line in row[i]) for i in range(len(header))]
    out = []
    for n, row in enumerate(cells):
        for k in range(max(len(c) for c in row)):
            out.append("  ".join((c[k] if k < len(c) else "").ljust(w)
                                 for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown (GitHub) table; `|` in a cell is escaped, newlines become spaces."""
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def numeric_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Align columns, the first left and the others right; numbers as `units.cell`."""
    cells = [list(map(str, header))] + [[cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, row in enumerate(cells):
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        parts = [row[0].ljust(widths[0]), *rest]
        lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare_text(table: list[dict[str, Any]]) -> str:
    """The comparison table (`CompareResult.table`) for a terminal."""
    return text_table(*compare_rows(table))


def sweep_text(sweep: dict[str, Any]) -> str:
    """A sweep's table (`SweepResult.to_dict()`) for a terminal."""
    return text_table(*sweep_rows(sweep))


def claims_text(claims: list[dict[str, Any]]) -> str:
    """The claims table for a terminal (long cells wrapped)."""
    return text_table(*claims_rows(claims), wrap={1: 28, 2: 22, 3: 58})


# ------------------------------------------------------------------ the verify metrics


def verify_table(result: VerifyResult) -> str:
    """A `VerifyResult`'s metrics as plain text (see `metrics_table`)."""
    return metrics_table(result.metrics)


def metrics_table(metrics: dict[str, Any]) -> str:
    """The `verify` metrics dict as plain text: accuracy per mode and layer, the error split,
    the norm drift, and the faithfulness curve."""
    if metrics.get("kind") == "sequence":
        return sequence_table(metrics)
    info = metrics.get("info", {})
    parts = []
    if info:
        parts.append(f"{info['n_inputs']} inputs, target {info['target']}, baseline "
                     f"{info['baseline']}, {info['n_ablated']} (input, channel) pairs ablated, "
                     f"{info.get('dtype', '')}")
    parts.append(_accuracy_table(metrics["modes"]))
    if "drift" in metrics:
        parts.append(_drift_table(metrics["drift"]))
    curves = [(mode, m["circuit"]) for mode, m in metrics["modes"].items() if m.get("circuit")]
    if curves:
        header = ["mode", "k", "mean sum pred", "mean joint", f"NE {NE_UNIT}", "pearson",
                  f"additivity NE {NE_UNIT}"]
        rows = [[mode, c["k"], c["mean_sum_predicted"], c["mean_joint"],
                 pct_cell(c["normalized_error"]), c["pearson"],
                 pct_cell(c.get("additivity_error", math.nan))]
                for mode, curve in curves for c in curve]
        parts.append("faithfulness: top-k channels by |predicted| ablated together "
                     "(NE % = 100 sum|sum_p - joint|/sum|joint| over inputs)\n"
                     + numeric_table(header, rows))
    undefined = [mode for mode, m in metrics["modes"].items()
                 if not math.isfinite(m["overall"]["normalized_error"])]
    if undefined:
        parts.append(f"undefined (nan above) for {', '.join(undefined)}: every actual effect "
                     f"measured is 0 (or none was measured), so there is nothing to explain; "
                     f"NE, the correlations, recall and sign agreement are not results")
    return "\n\n".join(parts)


def _accuracy_table(modes: dict[str, Any]) -> str:
    first = next(iter(modes.values()))
    recall = [k for k in first["overall"] if k.startswith("recall@")]
    header = ["mode / layer", f"NE {NE_UNIT}", "pearson", "spearman", *recall, "sign",
              f"drift NE {NE_UNIT}", f"gating NE {NE_UNIT}", f"drift share {NE_UNIT}"]
    rows = []
    for mode, m in modes.items():
        groups = [("all", m["overall"], m["decomposition"]["overall"])]
        groups += [(str(l), s, d) for l, (s, d) in
                   enumerate(zip(m["per_layer"], m["decomposition"]["per_layer"], strict=True))]
        for name, s, d in groups:
            # The split of docs/spec.md §3 explains the frozen linearization's error; a
            # prediction that already carries the drift's first-order term (live, renorm) has
            # no such split.
            split = ([pct_cell(d[k]) for k in ("drift_ne", "gating_ne", "drift_share")]
                     if mode == "frozen" else ["-", "-", "-"])
            rows.append([f"{mode} {name}", pct_cell(s["normalized_error"]), s["pearson"],
                         s["spearman"],
                         *[s[k] for k in recall], s["sign_agreement"], *split])
    return ("attribution vs ablation, errors in % (NE = 100 sum|p-a|/sum|a|; for frozen: "
            "drift NE = 100 sum|a-a_fn|/sum|a|, gating NE = 100 sum|a_fn-p|/sum|a|)\n"
            + numeric_table(header, rows))


def _drift_table(dr: dict[str, Any]) -> str:
    header = ["layer", "|ds/s| mean", "median", "p99", "seed est.", "formula r",
              f"formula NE {NE_UNIT}", "|a-a_fn|/|a| med", "upper-half med",
              f"sum ratio {NE_UNIT}"]
    rows = []
    for name, s in [("all", dr["overall"])] + [(str(l), s) for l, s in
                                                enumerate(dr["per_layer"])]:
        q = s["abs_ds_over_s"]
        rows.append([name, q["mean"], q["median"], q["p99"], s["seed_estimate"],
                     s["formula_pearson"], pct_cell(s["formula_ne"]), s["effect_ratio"]["median"],
                     s["effect_ratio_upper_half"]["median"], pct_cell(s["effect_ne"])])
    return ("norm drift at the ablated layer: measured ds/s vs the seed's "
            "(r.delta)/|r|^2, and its effect on the target\n" + numeric_table(header, rows))


# ------------------------------------------------------------------ sequence models

SPLIT_KEYS = ("frozen_ne", "norm_drift", "attention_change", "gating",
              "attention_change_norms_live", "interaction")


def sequence_table(metrics: dict[str, Any]) -> str:
    """The metrics as plain text: per mode and layer, node types, the split, circuits."""
    info = metrics.get("info", {})
    modes = metrics["modes"]
    recall = [k for k in next(iter(modes.values()))["overall"] if k.startswith("recall@")]
    header = ["mode / layer", "NE", "pearson", "spearman", *recall, "sign",
              "r at p", "r before p", "sign err"]
    rows = []
    for mode, m in modes.items():
        types = m["node_types"]
        sign_err = 1 - m["overall"]["sign_agreement"]
        rows.append([f"{mode} all", *_cells(m["overall"], recall), types["at_p"]["pearson"],
                     types["before_p"]["pearson"], sign_err])
        rows += [[f"{mode} {l}", *_cells(s, recall), "", "", ""]
                 for l, s in enumerate(m["per_layer"])]
    parts = [f"{info.get('n_inputs')} sequences of {info.get('seq_len')} tokens, target "
             f"{info.get('target')}, baseline {info.get('baseline')}, {info.get('n_ablated')} "
             f"nodes that reach the target, {info.get('dtype', '')}",
             "node attribution vs exact ablation (NE = sum|p-a|/sum|a|)\n"
             + numeric_table(header, rows)]
    split = metrics["split"]
    srows = [["all", *[split["overall"][k] for k in SPLIT_KEYS]]]
    srows += [[str(l), *[s[k] for k in SPLIT_KEYS]] for l, s in enumerate(split["per_layer"])]
    parts.append("error split of frozen, each sum|.|/sum|a|: a - p_f = (a - a_n) norm drift "
                 "+ (a_n - a_b) attention + (a_b - p_f) gating\n"
                 + numeric_table(["layer", "frozen NE", "norm drift", "attention", "gating",
                                  "attn (norms live)", "interaction"], srows))
    if metrics.get("features"):
        frows = []
        for mode, m in metrics["features"].items():
            frows.append([f"{mode} all", *_cells(m["overall"], recall)])
            frows += [[f"{mode} {l}", *_cells(s, recall)] for l, s in enumerate(m["per_layer"])]
        parts.append("features (channel (l, k) at every position at once) really ablated vs "
                     "the sum of the node predictions\n"
                     + numeric_table(["mode / layer", "NE", "pearson", "spearman", *recall,
                                      "sign"], frows))
    dist = next(iter(modes.values()))["by_distance"]
    drows = [[str(d["distance"]), *[_by(modes[m], d["distance"]) for m in modes]]
             for d in dist]
    parts.append("NE by distance p - t\n" + numeric_table(["p - t", *modes], drows))
    curves = [(mode, m["circuit"]) for mode, m in modes.items() if m.get("circuit")]
    if curves:
        crows = [[mode, c["k"], c["mean_sum_predicted"], c["mean_joint"],
                  c["normalized_error"], c.get("additivity_error")]
                 for mode, curve in curves for c in curve]
        parts.append("top-k nodes by |predicted| ablated together\n" + numeric_table(
            ["mode", "k", "mean sum pred", "mean joint", "NE", "additivity NE"], crows))
    return "\n\n".join(parts)


def _cells(s: dict[str, Any], recall: list[str]) -> list[Any]:
    return [s["normalized_error"], s["pearson"], s["spearman"], *[s[k] for k in recall],
            s["sign_agreement"]]


def _by(m: dict[str, Any], distance: int) -> Any:
    for d in m["by_distance"]:
        if d["distance"] == distance:
            return d["normalized_error"]
    return ""

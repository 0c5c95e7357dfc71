"""The language-model comparison's tables (`bilens.experiments.lm_compare`): the rows of the
comparison, of the frozen mode's error split and of a sweep, as strings, and their text
forms for a terminal. The report's LM section (`lm_section`) renders the same rows.

Every number is read off the table rows (`CompareResult.table`): the held-out loss in nats,
the perplexity, per mode the normalized error NE (in percent, as everywhere) and Pearson,
and the split `a - p_frozen = norm drift + attention-pattern change + gating interference`
(docs/lm-verification.md). With more than one seed a cell is `mean ± sd`.

Example:
    >>> row = {"norm": "rms", "position": "pre", "n_seeds": 1, "test_loss": 2.4,
    ...        "perplexity": 11.0, "test_accuracy": 0.5, "frozen.ne": 0.6, "frozen.pearson": 0.4}
    >>> header, rows = lm_compare_rows([row])
    >>> header[3:], rows[0][3:]
    (['loss (nats)', 'perplexity', 'acc %', 'NE frozen', 'Pearson frozen'], \
['2.400', '11.00', '50.00', '60.0%', '0.400'])
"""

from __future__ import annotations

import math
from typing import Any

from bilens.core.units import pct
from bilens.experiments.lm_compare import LM_EXTRA_TARGETS, LM_MODES
from bilens.report.tables import merge_none, text_table

SPLIT = (("drift.ne_drift", "norm drift"), ("drift.ne_attention", "attention change"),
         ("drift.ne_gating", "gating"))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def lm_modes_in(table: list[dict[str, Any]]) -> list[str]:
    """The sequence-model modes the table measured, in `LM_MODES` order."""
    return [m for m in LM_MODES if any(_finite(r.get(f"{m}.ne")) for r in table)]


def lm_targets_in(table: list[dict[str, Any]]) -> list[str]:
    """The extra targets (`LM_EXTRA_TARGETS`: the margin) the table measured."""
    return [t for t in LM_EXTRA_TARGETS
            if any(_finite(r.get(f"{t}.{m}.ne")) for r in table for m in LM_MODES)]


def _sd(row: dict[str, Any], key: str) -> float | None:
    """`key`'s seed sd, or None with one seed (the spread is unknown)."""
    sd = row.get(f"{key}_std")
    return sd if int(row.get("n_seeds", 1)) > 1 and _finite(sd) else None


def pct_pm(row: dict[str, Any], key: str, digits: int = 1) -> str:
    """`row[key]` as a percentage, `± sd` with several seeds: `"51.0%"`, `"51.0 ± 2.1%"`."""
    mean, sd = row.get(key, math.nan), _sd(row, key)
    text = pct(mean if _finite(mean) else math.nan, digits)
    if sd is None or text == "n/a":
        return text
    return f"{text[:-1]} ± {100 * sd:.{digits}f}%"


def num_pm(row: dict[str, Any], key: str, digits: int = 3, scale: float = 1.0) -> str:
    """`scale * row[key]` with `digits` decimals, `± sd` with several seeds; `n/a` if
    absent."""
    mean, sd = row.get(key, math.nan), _sd(row, key)
    if not _finite(mean):
        return "n/a"
    return f"{scale * mean:.{digits}f}" + ("" if sd is None else f" ± {scale * sd:.{digits}f}")


def _config(row: dict[str, Any]) -> list[str]:
    return [str(row.get("norm")), str(row.get("position"))]


def lm_compare_rows(table: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the models and their attributions: the held-out loss (nats),
    perplexity and next-token accuracy, then NE and Pearson of every mode measured against the
    exact ablation of every node (target as configured); no norm once (`merge_none`)."""
    modes = lm_modes_in(table)
    header = ["norm", "position", "seeds", "loss (nats)", "perplexity", "acc %",
              *(f"NE {m}" for m in modes), *(f"Pearson {m}" for m in modes)]
    rows = [[*_config(r), str(r.get("n_seeds", 1)), num_pm(r, "test_loss"),
             num_pm(r, "perplexity", 2),
             num_pm(r, "test_accuracy", 2, scale=100),
             *(pct_pm(r, f"{m}.ne") for m in modes),
             *(num_pm(r, f"{m}.pearson") for m in modes)] for r in merge_none(table)]
    return header, rows


def lm_split_rows(table: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of where the frozen linearization's error comes from (each part
    `sum|part| / sum|a|`), and every mode's NE for each extra target (the margin)."""
    modes, extra = lm_modes_in(table), lm_targets_in(table)
    header = ["norm", "position", "NE frozen", *(name for _k, name in SPLIT),
              *(f"{t}: NE {m}" for t in extra for m in modes)]
    rows = [[*_config(r), pct_pm(r, "frozen.ne"), *(pct_pm(r, k) for k, _n in SPLIT),
             *(pct_pm(r, f"{t}.{m}.ne") for t in extra for m in modes)]
            for r in merge_none(table)]
    return header, rows


def _x(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def lm_sweep_rows(sweep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a language-model sweep's table (`SweepResult.to_dict()`): per
    point the held-out loss, the active fraction, every mode's NE and the frozen error's
    split; for a depth sweep the frozen NE per layer."""
    table = sweep.get("table") or []
    modes = lm_modes_in(table)
    header = ["norm/pos", sweep.get("label") or sweep.get("name", "x"),
              "loss (nats)", "active", *(f"NE {m}" for m in modes),
              *(name for _k, name in SPLIT)]
    depth = sweep.get("name") == "depth"
    if depth:
        header.append("NE frozen per layer")
    rows = []
    for r in table:
        row = [f"{r.get('norm')}/{r.get('position')}", _x(r.get("x")), num_pm(r, "test_loss"),
               pct(r.get("active_fraction", math.nan)),
               *(pct_pm(r, f"{m}.ne") for m in modes), *(pct_pm(r, k) for k, _n in SPLIT)]
        if depth:
            row.append(" ".join(pct(v, 0) for v in r.get("frozen.ne_per_layer", [])))
        rows.append(row)
    return header, rows


def lm_compare_text(table: list[dict[str, Any]]) -> str:
    """The language-model comparison (`compare_lm(...).table`) for a terminal: the models and
    every mode's NE and Pearson, then the frozen error's split and the margin's NE."""
    return ("held-out loss and next-token accuracy; attribution vs exact ablation of every "
            "node (NE = sum|p - a| / sum|a|)\n"
            + text_table(*lm_compare_rows(table))
            + "\n\nfrozen's error split, each sum|part| / sum|a| (the parts can cancel), "
              "and the second target\n" + text_table(*lm_split_rows(table)))


def lm_sweep_text(sweep: dict[str, Any]) -> str:
    """A language-model sweep's table (`SweepResult.to_dict()`) for a terminal."""
    return text_table(*lm_sweep_rows(sweep))

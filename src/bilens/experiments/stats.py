"""Numbers over seeds and sweep points: the mean and spread of every summary number per
group of rows (`aggregate`), the one noise rule for comparing two such means
(`noise_compare`), a rank correlation for trends (`spearman`), which attribution modes a
table measured (`modes_in`), and the quality a comparison ranks models by, with its
direction and units (`Quality`: `ACCURACY` for the MLP networks, `LOSS` for the language
models). Rows are the dicts `Runner.evaluate` returns; tables are lists of aggregated rows.

**The noise rule** (every accuracy comparison of the claims and the recommendation): two
means over seeds differ only when `|a - b| > NOISE_SD * pooled sd`, with the pooled sd
`sqrt(((n_a - 1) sd_a^2 + (n_b - 1) sd_b^2) / (n_a + n_b - 2))` of the seeds (the sample
sds of the two groups); otherwise they are "not distinguishable". With one seed on each
side the spread is unknown and the means are compared as they are (and said to be).

Example:
    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    >>> noise_compare(0.9862, 0.0006, 3, 0.9831, 0.0010, 3)["verdict"]
    'higher'
    >>> noise_compare(0.9834, 0.0008, 3, 0.9831, 0.0010, 3)["verdict"]
    'not distinguishable'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bilens.core.units import pct

MODES = ("frozen", "live", "renorm")     # every mode verified; the claims use frozen and live
LM_MODES = ("frozen", "frozen-norm", "live", "renorm")   # the sequence models (docs/spec.md §9)
NOISE_SD = 2.0                           # means closer than 2 pooled sd: not distinguishable
EXTRA_TARGETS = ("margin",)              # compare also verifies these (docs/spec.md §2)


def get(row: dict[str, Any], path: str) -> Any:
    """`get(row, "frozen.ne")` -> `row["frozen"]["ne"]` (NaN where absent)."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return math.nan
        value = value[part]
    return value


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def pooled_sd(sd_a: float, n_a: int, sd_b: float, n_b: int) -> float:
    """The pooled sample sd of two groups of seeds (a group of one adds no spread); NaN
    when neither group has two seeds, or an sd is missing."""
    dof = (n_a - 1) + (n_b - 1)
    parts = [(n - 1) * sd ** 2 for sd, n in ((sd_a, n_a), (sd_b, n_b)) if n > 1]
    if dof < 1 or not all(math.isfinite(p) for p in parts):
        return math.nan
    return math.sqrt(sum(parts) / dof)


def noise_compare(a: float, sd_a: float, n_a: int, b: float, sd_b: float, n_b: int, *,
                  scale: float = 100.0, unit: str = "pp", digits: int = 2) -> dict[str, Any]:
    """The noise rule (module docstring) for mean `a` against mean `b`.

    Args:
        scale, unit, digits: how `text` writes a difference (accuracies: x100 in percentage
            points, 2 decimals; losses: `scale=1, unit="nats", digits=4`).

    Returns:
        `{"diff": a - b, "pooled_sd", "noise": NOISE_SD * pooled_sd, "verdict": "higher" |
        "lower" | "not distinguishable", "text"}`, `text` saying how the rule decided
        (e.g. `"+0.31 pp (2 pooled sd = 0.16 pp)"`).
    """
    diff, sd = a - b, pooled_sd(sd_a, n_a, sd_b, n_b)
    noise = NOISE_SD * sd
    if not (math.isfinite(a) and math.isfinite(b)):
        verdict = "not distinguishable"
    elif math.isfinite(noise) and abs(diff) <= noise:
        verdict = "not distinguishable"
    else:
        verdict = "higher" if diff > 0 else "lower" if diff < 0 else "not distinguishable"
    spread = (f"{NOISE_SD:g} pooled sd = {scale * noise:.{digits}f} {unit}"
              if math.isfinite(noise) else "1 seed: spread unknown")
    return {"diff": diff, "pooled_sd": sd, "noise": noise, "verdict": verdict,
            "text": f"{scale * diff:+.{digits}f} {unit} ({spread})"}


def finite(value: Any) -> bool:
    """`value` is a finite number (not None, NaN, a bool or a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


@dataclass(frozen=True)
class Quality:
    """What a comparison ranks models by: a table column (`key`, its `_std` beside it),
    which way is better (`higher`), how a difference is written (`scale`, `unit`, `digits`)
    and the words for better and worse. `ACCURACY` and `LOSS` are the two in use.

    Example:
        >>> LOSS.gain({"test_loss": 3.1}, {"test_loss": 3.3}) > 0      # lower is better
        True
    """

    id: str
    key: str
    name: str
    higher: bool
    unit: str
    scale: float
    digits: int
    better_than: str            # "RMSNorm is <better_than> no norm"
    worse_than: str
    above: str                  # "holds if RMSNorm is <above> no norm and <below> LayerNorm"
    below: str

    @property
    def better(self) -> str:
        """The `noise_compare` verdict of `a` against `b` that means `a` is better."""
        return "higher" if self.higher else "lower"

    @property
    def worse(self) -> str:
        return "lower" if self.higher else "higher"

    def value(self, row: dict[str, Any]) -> float:
        v = row.get(self.key, math.nan)
        return float(v) if finite(v) else math.nan

    def gain(self, a: dict[str, Any], b: dict[str, Any]) -> float:
        """How much better `a` is than `b`, in `unit` (negative: worse)."""
        return (1 if self.higher else -1) * self.scale * (self.value(a) - self.value(b))

    def best(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The row of best mean (the first of equals); None if none is finite."""
        rows = [r for r in rows if math.isfinite(self.value(r))]
        sign = 1 if self.higher else -1
        return max(rows, key=lambda r: sign * self.value(r)) if rows else None

    def compare(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """`noise_compare` of two table rows' means (`a` against `b`), in this unit."""
        return noise_compare(self.value(a), a.get(self.key + "_std", math.nan),
                             int(a.get("n_seeds", 1)), self.value(b),
                             b.get(self.key + "_std", math.nan), int(b.get("n_seeds", 1)),
                             scale=self.scale, unit=self.unit, digits=self.digits)

    def amount(self, gain: float) -> str:
        """A difference already in `unit`: `"0.31 pp"`, `"0.0123 nats"`."""
        return f"{gain:.{self.digits}f} {self.unit}"

    def show(self, value: float) -> str:
        """One mean: `"98.31%"`, `"3.2952 nats"`."""
        if self.unit == "pp":
            return pct(value, self.digits)
        return f"{value:.{self.digits}f} {self.unit}" if finite(value) else "n/a"

    def relation(self, verdict: str) -> str:
        """A `compare` verdict in words: `"more accurate than"`, ..."""
        return {self.better: self.better_than, self.worse: self.worse_than}.get(
            verdict, "not distinguishable from")


ACCURACY = Quality("accuracy", "test_accuracy", "accuracy", True, "pp", 100.0, 2,
                   "more accurate than", "less accurate than", "above", "below")
LOSS = Quality("loss", "test_loss", "held-out loss", False, "nats", 1.0, 4,
               "better (lower held-out loss) than", "worse (higher held-out loss) than",
               "better than", "worse than")


def spearman(xs: list[float], ys: list[float]) -> float:
    """`metrics.spearman` over a sweep's points (ties averaged); NaN for < 3 finite pairs,
    too few for a trend."""
    import torch

    from bilens.analysis.metrics import spearman as rank_correlation

    if sum(math.isfinite(x) and math.isfinite(y) for x, y in zip(xs, ys, strict=True)) < 3:
        return math.nan
    return rank_correlation(torch.tensor(xs, dtype=torch.float64),
                            torch.tensor(ys, dtype=torch.float64))


SUMMARY_PATHS = (
    "test_accuracy", "active_fraction", "train_time",
    *(f"{m}.{k}" for m in MODES for k in ("ne", "pearson", "spearman", "top10", "sign")),
    "drift.ne_drift", "drift.ne_gating", "drift.drift_share", "drift.ds_over_s",
    "drift.ds_over_s_median", "drift.seed_estimate", "drift.delta_over_r",
    "drift.formula_corr", "drift.effect_ratio", "verify_time",
    *(f"{t}.{m}.{k}" for t in EXTRA_TARGETS for m in MODES for k in ("ne", "pearson", "top10")),
    *(f"{t}.drift.drift_share" for t in EXTRA_TARGETS),
)
LIST_PATHS = (*(f"{m}.ne_per_layer" for m in MODES), "drift.ne_drift_per_layer",
              "drift.ne_gating_per_layer")


def aggregate(rows: list[dict[str, Any]], by: tuple[str, ...], *,
              paths: tuple[str, ...] = SUMMARY_PATHS,
              list_paths: tuple[str, ...] = LIST_PATHS) -> list[dict[str, Any]]:
    """Group rows by the `by` keys and give every summary number (`paths`) as mean and
    `_std`. Lists (`list_paths`: per layer, or `[[x, y], ...]` pairs) are averaged
    elementwise over the seeds whose lists have the same length.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    table = []
    for key, members in groups.items():
        out: dict[str, Any] = dict(zip(by, key, strict=False))
        out["n_seeds"] = len(members)
        for k in ("dataset", "d_model", "d_hidden", "n_layers", "n_heads", "l1"):
            values = {m.get(k) for m in members}
            if len(values) == 1 and k not in out:
                out[k] = values.pop()               # shared by the group: keep it
        for path in paths:
            m, s = mean_std(get(r, path) for r in members)
            out[path] = m
            out[path + "_std"] = s
        for path in list_paths:
            lists = [get(r, path) for r in members]
            lists = [v for v in lists if isinstance(v, list)]
            if lists and all(len(v) == len(lists[0]) for v in lists):
                out[path] = [_mean_item(col) for col in zip(*lists, strict=False)]
        table.append(out)
    return table


def _mean_item(col: tuple) -> Any:
    """The mean of one column of lists: of numbers, or elementwise of `[x, y]` pairs."""
    if all(isinstance(v, list) for v in col):
        return [mean_std(parts)[0] for parts in zip(*col, strict=False)]
    return mean_std(col)[0]


def targets_in(table: list[dict[str, Any]]) -> list[str]:
    """The extra targets (`EXTRA_TARGETS`) the table measured."""
    return [t for t in EXTRA_TARGETS if any(
        isinstance(r.get(f"{t}.frozen.ne"), float) and math.isfinite(r[f"{t}.frozen.ne"])
        for r in table)]


def modes_in(table: list[dict[str, Any]], modes: tuple[str, ...] = MODES) -> list[str]:
    """The attribution modes of `modes` the table measured (frozen and live always, the
    others if run)."""
    return [m for m in modes if any(isinstance(r.get(f"{m}.ne"), float) and
                                    math.isfinite(r[f"{m}.ne"]) for r in table)] \
        or ["frozen", "live"]

"""The rules and thresholds every claims table applies, and what a claim reads off a row.

`bilens.experiments.claims` (the MLP networks) and `bilens.experiments.lm_claims` (the
language models) judge the seed's claims with these, so one family's verdicts mean what
the other's do. The thresholds (documented in `claims`' docstring): `FACTOR`, `SMALL_NE`,
`TOLERABLE_NE`, `TREND` (the trend rule, `trend_rule`) and `DIFFER` (`_differ`, beside the
noise rule of `bilens.experiments.stats`).

A `View` says which numbers of a table row a claim reads: the family's reference norm
position, the attribution mode the seed's claims are about, the target (the table's own,
or an extra one such as `margin`, whose numbers sit under `margin.`), and the quantity
that softens a trend's failure to `partly`. `MLP` is the view of `claims`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bilens.core.units import num, pct
from bilens.experiments.stats import NOISE_SD, finite, pooled_sd, spearman

FACTOR = 2.0
SMALL_NE = 0.05
TOLERABLE_NE = 0.15
TREND = 0.7
DIFFER = 0.25


def within(x: float, target: float, factor: float = FACTOR) -> bool:
    """`x` matches "~target" within `factor` either way."""
    return math.isfinite(x) and target / factor <= x <= target * factor


def row_of(table: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The first table row whose keys equal `match` (None if there is none)."""
    return next((r for r in table if all(r.get(k) == v for k, v in match.items())), None)


def usable(rows: list[dict[str, Any] | None], *paths: str) -> bool:
    """Every row is there and has a finite number at every path (else: not measured)."""
    return all(r is not None and all(finite(r.get(p)) for p in paths) for r in rows)


def _claim(cid: str, claim: str, seed: str, verdict: str, measured: str, rule: str,
           why: str = "", numbers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": cid, "claim": claim, "seed": seed, "verdict": verdict, "measured": measured,
            "rule": rule, "why": why, "numbers": numbers or {}}


def _missing(cid: str, claim: str, seed: str, needs: str) -> dict[str, Any]:
    return _claim(cid, claim, seed, "not measured", "-", f"needs {needs}", f"run {needs}")


def _differ(a: dict[str, Any], b: dict[str, Any], path: str,
            path_b: str | None = None) -> tuple[bool, float]:
    """`a[path]` and `b[path_b]` (default the same path) differ: by at least `DIFFER`
    (relative) and by more than `NOISE_SD` pooled sd over seeds; and the relative
    difference."""
    path_b = path_b or path
    x, y = a[path], b[path_b]
    rel = abs(x - y) / max(abs(x), abs(y)) if max(abs(x), abs(y)) > 0 else 0.0
    sd = pooled_sd(a.get(path + "_std", math.nan), int(a.get("n_seeds", 1)),
                   b.get(path_b + "_std", math.nan), int(b.get("n_seeds", 1)))
    noise = NOISE_SD * sd if math.isfinite(sd) else 0.0      # one seed: the means alone
    return rel >= DIFFER and abs(x - y) > noise, rel


def trend_rule(xs: list[float], ys: list[float], second: list[float],
               sign: int) -> tuple[str, float, float] | None:
    """The trend rule over points sorted by `xs`: `ys` moves with `xs` in the claimed
    direction (`sign` +1: grows with x; -1: falls with x) when its Spearman rank
    correlation, times `sign`, is at least `TREND` *and* `ys` is lower at the claimed-small
    end than at the other: `holds`; `partly` when only `second` (the quantity behind `ys`)
    passes the correlation, or `ys` reaches `TREND / 2`; `fails` otherwise.

    Returns:
        `(verdict, rho, rho_second)` (each rho times `sign`), or None for < 3 finite points.
    """
    rho, rho2 = sign * spearman(xs, ys), sign * spearman(xs, second)
    if not math.isfinite(rho):
        return None
    best, worst = (ys[0], ys[-1]) if sign > 0 else (ys[-1], ys[0])   # claimed-small end first
    verdict = ("holds" if rho >= TREND and best < worst else
               "partly" if rho2 >= TREND or rho >= TREND / 2 else "fails")
    return verdict, rho, rho2


def _drift_why(row: dict[str, Any]) -> str:
    """Why freezing the norm fails or works, in the MLP verify quantities."""
    return (f"The norm's statistic moves little when one channel is ablated (mean |ds/s| = "
            f"{pct(row['drift.ds_over_s'], 2)}, the seed's formula tracks it with Pearson "
            f"{num(row['drift.formula_corr'])}), but that drift rescales the whole residual, and "
            f"its effect on the target is {num(row['drift.effect_ratio'], 2)} x the channel's "
            f"own effect (median over the channels with the larger effects). Of the frozen "
            f"mode's error, {pct(row['drift.drift_share'])} is norm drift "
            f"(NE {pct(row['drift.ne_drift'])}) and the rest gating interference "
            f"(NE {pct(row['drift.ne_gating'])}).")


def _mlp_why(row: dict[str, Any], view: View) -> str:
    return _drift_why(row)


@dataclass(frozen=True)
class View:
    """Which numbers of a row a claim reads, and how its text names them.

    Attributes:
        family: `mlp` or `lm`.
        position: the reference norm position (`post` for the MLP networks; `pre`, the
            published bilinear LMs' layout, for the language models).
        mode: the attribution mode the seed's claims are about (`frozen`; `frozen-norm` for
            the language models: norms held, attention live, the seed's proposal).
        target: `""` for the table's own target, or an extra one (`margin`).
        second, second_name, second_key: the norm's own drift, beside the error in a trend
            (`drift.ds_over_s`, `|ds/s|`; the LMs' rows have the norm-drift NE instead).
        seed_from: where the seed's point (d_model 256, ~10% active) is looked for, in order.
        seed_d_model: the d_model the seed's condition also requires (None: not checked).
        why: the sentence that explains a frozen error from a row.
    """

    family: str = "mlp"
    position: str = "post"
    mode: str = "frozen"
    target: str = ""
    second: str = "drift.ds_over_s"
    second_name: str = "|ds/s|"
    second_key: str = "ds_over_s"
    seed_from: tuple[str, ...] = ("sparsity", "d_model", "compare")
    seed_d_model: int | None = None
    why: Callable[[dict[str, Any], View], str] = _mlp_why

    def path(self, name: str) -> str:
        """`name`'s column for this view's target: `margin.frozen-norm.ne`."""
        return f"{self.target}.{name}" if self.target else name

    @property
    def ne(self) -> str:
        """The column of the mode's normalized error."""
        return self.path(f"{self.mode}.ne")

    @property
    def live(self) -> str:
        return self.path("live.ne")

    @property
    def drift(self) -> str:
        """The norm-drift part of the frozen error."""
        return self.path("drift.ne_drift")


MLP = View()

"""How bilens writes a number for a reader: percentages, mean ± sd, fixed and significant
digits. One place, so the claims, the recommendation and every table agree; a number that
is not finite is written `n/a` (`nan` in the verify metrics table).

The normalized error NE (and every error or share beside it) is shown as a percentage
everywhere a person reads it: `pct` in the comparison, sweep and claims tables and the
report, `pct_cell` under a header ending in `NE_UNIT` in the verify table. Files
(`metrics.json`, `compare.json`, ...) keep the fraction: `0.0123` there is `1.23` %.

Example:
    >>> pct(0.0123), pm(0.9512, 0.004), fixed(0.98765), num(1234.5, 2)
    ('1.2%', '95.12 ± 0.40', '0.988', '1.2e+03')
    >>> pct_cell(0.0123), pct_cell(17.2), pct_cell(2e-7)
    ('1.23', '1720.00', '2e-05')
"""

from __future__ import annotations

import math
from typing import Any


def pct(x: float | None, digits: int = 1) -> str:
    """`0.0123` -> `"1.2%"`; a nonzero value that would round to zero keeps two significant
    digits (`0.0000123` -> `"0.0012%"`); NaN -> `"n/a"`."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x != 0 and abs(100 * x) < 0.5 * 10 ** -digits:
        return f"{100 * x:.2g}%"
    return f"{100 * x:.{digits}f}%"


NE_UNIT = "%"          # the unit of NE in every printed table (files keep the fraction)


def pct_cell(x: float | None) -> str:
    """A fraction as a percentage number for a table whose header says `%`: two decimals
    (`0.0123` -> `"1.23"`), two significant digits below 0.01 % (`2e-7` -> `"2e-05"`),
    `"nan"` if not finite."""
    if x is None or not math.isfinite(x):
        return "nan"
    v = 100 * x
    return f"{v:.2f}" if v == 0 or abs(v) >= 0.01 else f"{v:.2g}"


def num(x: float | None, digits: int = 3) -> str:
    """`digits` significant digits; NaN -> `"n/a"`."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def fixed(x: float, digits: int = 3) -> str:
    """`digits` decimals; NaN -> `"n/a"`."""
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def pm(mean: float, sd: float | None, scale: float = 100, digits: int = 2) -> str:
    """`mean ± sd` (scaled); the `± sd` is left out when `sd` is None or NaN (one seed)."""
    if not math.isfinite(mean):
        return "n/a"
    if sd is None or not math.isfinite(sd):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def cell(x: Any) -> str:
    """A cell of the verify metrics table: integers and text as they are, floats with four
    decimals in [1e-3, 1e4) (and 0), in scientific notation outside, `nan` if not finite."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return "nan"
    if x == 0 or 1e-3 <= abs(x) < 1e4:
        return f"{x:.4f}"
    return f"{x:.2e}"

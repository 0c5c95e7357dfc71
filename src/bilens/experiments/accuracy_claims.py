"""The seed's two accuracy claims (3 and 4 of `bilens.experiments.claims`), each judged by
the one noise rule of `bilens.experiments.stats` (two means over seeds differ only when
they are more than two pooled sd apart; otherwise "not distinguishable") and against the
best configuration, not a chosen one.

- Claim 3, "no norm costs accuracy" (the seed: ~9 pp worse than LayerNorm): no norm
  against the *best normalized* configuration (the norm x position with the highest mean
  accuracy). `holds` if the best normalized one is distinguishably more accurate and the
  gap is within 2x of 9 pp; `partly` if it is distinguishably more accurate by another
  amount; `fails` if the two are not distinguishable or no norm is more accurate.
- Claim 4, "RMSNorm accuracy lies between none and LayerNorm": each norm at its best
  position (no norm is one network in both). `holds` if RMSNorm is distinguishably above
  no norm and distinguishably below LayerNorm; `fails` if it is distinguishably below no
  norm, or not distinguishable from either (no order to lie in); `partly` otherwise.
"""

from __future__ import annotations

import math
from typing import Any

from bilens.core.units import pct
from bilens.experiments.stats import NOISE_SD, noise_compare

FACTOR = 2.0
SEED_ACC_GAP_PP = 9.0                # the seed's "no norm: worse (-9%)"
NORM_NAMES = {"none": "no norm", "rms": "RMSNorm", "layer": "LayerNorm"}
NOISE_RULE = (f"two means over seeds differ only when more than {NOISE_SD:g} pooled sd "
              f"apart, else not distinguishable")
RELATION = {"higher": "more accurate than", "lower": "less accurate than",
            "not distinguishable": "not distinguishable from"}


def best_row(cmp: dict[str, Any], norms: tuple[str, ...]) -> dict[str, Any] | None:
    """The row of `norms` with the highest mean accuracy (the first of equals)."""
    rows = [r for r in cmp["table"] if r["norm"] in norms
            and math.isfinite(r.get("test_accuracy", math.nan))]
    return max(rows, key=lambda r: r["test_accuracy"]) if rows else None


def versus(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """`stats.noise_compare` of two table rows' test accuracies (`a` against `b`)."""
    return noise_compare(a["test_accuracy"], a.get("test_accuracy_std", math.nan),
                         int(a.get("n_seeds", 1)), b["test_accuracy"],
                         b.get("test_accuracy_std", math.nan), int(b.get("n_seeds", 1)))


def _name(row: dict[str, Any]) -> str:
    return f"{row['norm']}/{row['position']}"


def _row(cid: str, claim: str, seed: str, verdict: str, measured: str, rule: str,
         why: str = "", numbers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": cid, "claim": claim, "seed": seed, "verdict": verdict, "measured": measured,
            "rule": rule, "why": why, "numbers": numbers or {}}


def claim_no_norm_accuracy(cmp: dict[str, Any]) -> dict[str, Any]:
    """Claim 3 (module docstring): no norm against the best normalized configuration."""
    text, seed = "No norm costs accuracy", "~9% worse than LayerNorm"
    rule = (f"{NOISE_RULE}; no norm against the best normalized configuration: holds if that "
            f"one is more accurate by a gap within {FACTOR:g}x of 9 pp; partly if more "
            f"accurate by another gap; fails if not distinguishable or no norm is more accurate")
    none, best = best_row(cmp, ("none",)), best_row(cmp, ("rms", "layer"))
    if none is None or best is None:
        return _row("no_norm_accuracy", text, seed, "not measured", "-", rule,
                    "run bilens compare")
    found = versus(best, none)
    gap, real = 100 * found["diff"], found["verdict"] == "higher"
    verdict = ("holds" if real and SEED_ACC_GAP_PP / FACTOR <= gap <= SEED_ACC_GAP_PP * FACTOR
               else "partly" if real else "fails")
    measured = (f"none {pct(none['test_accuracy'], 2)} vs the best normalized, {_name(best)} "
                f"{pct(best['test_accuracy'], 2)}: gap {found['text']}: {found['verdict']}")
    if verdict == "holds":
        why = (f"The best normalized configuration ({_name(best)}) is {gap:.2f} pp more "
               f"accurate than no norm, near the seed's 9 points.")
    elif verdict == "partly":
        why = (f"No norm does cost accuracy, but {gap:.2f} pp against the best normalized "
               f"configuration ({_name(best)}), not ~9.")
    elif found["verdict"] == "not distinguishable":
        why = (f"No norm is not distinguishable from the best normalized configuration "
               f"({_name(best)}) at this seed spread; the seed's 9-point gap does not appear.")
    else:
        why = (f"No norm is {-gap:.2f} pp more accurate than the best normalized "
               f"configuration ({_name(best)}).")
    return _row("no_norm_accuracy", text, seed, verdict, measured, rule, why,
                {"gap_pp": gap, "noise_pp": 100 * found["noise"], "best": _name(best),
                 "comparison": found["verdict"]})


def claim_rms_between(cmp: dict[str, Any]) -> dict[str, Any]:
    """Claim 4 (module docstring): each norm at its best position."""
    text, seed = "RMSNorm accuracy lies between none and LayerNorm", "good (middle)"
    rule = (f"{NOISE_RULE}; each norm at its best position: holds if RMSNorm is above no "
            f"norm and below LayerNorm; fails if below no norm or not distinguishable from "
            f"either; partly otherwise")
    best = {n: best_row(cmp, (n,)) for n in ("none", "rms", "layer")}
    if any(r is None for r in best.values()):
        return _row("rms_between", text, seed, "not measured", "-", rule, "run bilens compare")
    up, down = versus(best["rms"], best["none"]), versus(best["rms"], best["layer"])
    above, below = up["verdict"], down["verdict"]
    if above == "higher" and below == "lower":
        verdict = "holds"
    elif above == "lower" or above == below == "not distinguishable":
        verdict = "fails"
    else:
        verdict = "partly"
    measured = (", ".join(f"{NORM_NAMES[n]} {pct(r['test_accuracy'], 2)}"
                          + ("" if n == "none" else f" ({r['position']})")
                          for n, r in best.items())
                + f"; RMSNorm vs no norm {up['text']}: {above}; vs LayerNorm "
                  f"{down['text']}: {below}")
    if verdict == "holds":
        why = ""
    elif above == below == "not distinguishable":
        why = ("RMSNorm is not distinguishable from either no norm or LayerNorm at this seed "
               "spread, so there is no order to lie in.")
    else:
        why = (f"RMSNorm is {RELATION[above]} no norm and {RELATION[below]} LayerNorm"
               + (", not between them." if above != "lower" else "."))
    return _row("rms_between", text, seed, verdict, measured, rule, why,
                {**{n: r["test_accuracy"] for n, r in best.items()},
                 "vs_none": above, "vs_layer": below})

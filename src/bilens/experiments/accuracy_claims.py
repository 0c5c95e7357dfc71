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

The same two claims judge the language models' held-out loss (`bilens.experiments
.lm_claims`) through the `quality` argument (`stats.LOSS`: lower is better, in nats). The
seed's 9 points are accuracy and have no counterpart in nats, so with `seed_gap=None` only
the direction is judged: claim 3 `holds` when the best normalized configuration is
distinguishably better, `fails` otherwise.
"""

from __future__ import annotations

from typing import Any

from bilens.experiments.claim_rules import FACTOR, _claim
from bilens.experiments.stats import ACCURACY, NOISE_SD, Quality

SEED_ACC_GAP_PP = 9.0                # the seed's "no norm: worse (-9%)"
NORM_NAMES = {"none": "no norm", "rms": "RMSNorm", "layer": "LayerNorm"}
NOISE_RULE = (f"two means over seeds differ only when more than {NOISE_SD:g} pooled sd "
              f"apart, else not distinguishable")


def best_row(cmp: dict[str, Any], norms: tuple[str, ...],
             quality: Quality = ACCURACY) -> dict[str, Any] | None:
    """The row of `norms` with the best mean `quality` (the first of equals)."""
    return quality.best([r for r in cmp["table"] if r["norm"] in norms])


def versus(a: dict[str, Any], b: dict[str, Any], quality: Quality = ACCURACY) -> dict[str, Any]:
    """`stats.noise_compare` of two table rows' means of `quality` (`a` against `b`)."""
    return quality.compare(a, b)


def _name(row: dict[str, Any]) -> str:
    return f"{row['norm']}/{row['position']}"


def _direction(q: Quality) -> str:
    """What the rule says first when better is not higher."""
    return "" if q.higher else f"lower {q.name} ({q.unit}) is better; "


def _no_norm_rule(q: Quality, sized: bool) -> str:
    if sized:
        return (f"{NOISE_RULE}; no norm against the best normalized configuration: holds if "
                f"that one is more accurate by a gap within {FACTOR:g}x of 9 pp; partly if "
                f"more accurate by another gap; fails if not distinguishable or no norm is "
                f"more accurate")
    return (f"{NOISE_RULE}; {_direction(q)}no norm against the best normalized "
            f"configuration: holds if that one is better; fails if not distinguishable or no "
            f"norm is better (the seed's "
            f"9 pp are accuracy, with no counterpart in {q.unit}: only the direction is judged)")


def claim_no_norm_accuracy(cmp: dict[str, Any], quality: Quality = ACCURACY,
                           seed_gap: float | None = SEED_ACC_GAP_PP) -> dict[str, Any]:
    """Claim 3 (module docstring): no norm against the best normalized configuration."""
    q, sized = quality, seed_gap is not None
    cid, text, seed = f"no_norm_{q.id}", f"No norm costs {q.name}", "~9% worse than LayerNorm"
    rule = _no_norm_rule(q, sized)
    none, best = best_row(cmp, ("none",), q), best_row(cmp, ("rms", "layer"), q)
    if none is None or best is None:
        return _claim(cid, text, seed, "not measured", "-", rule, "run bilens compare")
    found = versus(best, none, q)
    gap, real = q.gain(best, none), found["verdict"] == q.better
    verdict = ("holds" if real and (not sized or seed_gap / FACTOR <= gap <= seed_gap * FACTOR)
               else "partly" if real else "fails")
    measured = (f"none {q.show(q.value(none))} vs the best normalized, {_name(best)} "
                f"{q.show(q.value(best))}: gap {found['text']}: {found['verdict']}")
    if verdict == "holds":
        why = (f"The best normalized configuration ({_name(best)}) is {q.amount(gap)} "
               f"{q.better_than} no norm" + (", near the seed's 9 points." if sized else
                                             "; the seed's size is in accuracy points."))
    elif verdict == "partly":
        why = (f"No norm does cost {q.name}, but {q.amount(gap)} against the best normalized "
               f"configuration ({_name(best)}), not ~9.")
    elif found["verdict"] == "not distinguishable":
        why = (f"No norm is not distinguishable from the best normalized configuration "
               f"({_name(best)}) at this seed spread; " +
               ("the seed's 9-point gap does not appear." if sized else "no cost appears."))
    else:
        why = (f"No norm is {q.amount(-gap)} {q.better_than} the best normalized "
               f"configuration ({_name(best)}).")
    return _claim(cid, text, seed, verdict, measured, rule, why,
                  {f"gap_{q.unit}": gap, f"noise_{q.unit}": q.scale * found["noise"],
                   "best": _name(best), "comparison": found["verdict"]})


def claim_rms_between(cmp: dict[str, Any], quality: Quality = ACCURACY) -> dict[str, Any]:
    """Claim 4 (module docstring): each norm at its best position."""
    q = quality
    text, seed = f"RMSNorm {q.name} lies between none and LayerNorm", "good (middle)"
    rule = (f"{NOISE_RULE}; {_direction(q)}each norm at its best position: holds if RMSNorm "
            f"is {q.above} no norm and {q.below} LayerNorm; fails if {q.below} no norm or "
            f"not distinguishable from either; partly otherwise")
    best = {n: best_row(cmp, (n,), q) for n in ("none", "rms", "layer")}
    if any(r is None for r in best.values()):
        return _claim("rms_between", text, seed, "not measured", "-", rule,
                      "run bilens compare")
    up, down = versus(best["rms"], best["none"], q), versus(best["rms"], best["layer"], q)
    above, below = up["verdict"], down["verdict"]
    if above == q.better and below == q.worse:
        verdict = "holds"
    elif above == q.worse or above == below == "not distinguishable":
        verdict = "fails"
    else:
        verdict = "partly"
    measured = (", ".join(f"{NORM_NAMES[n]} {q.show(q.value(r))}"
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
        why = (f"RMSNorm is {q.relation(above)} no norm and {q.relation(below)} LayerNorm"
               + (", not between them." if above != q.worse else "."))
    return _claim("rms_between", text, seed, verdict, measured, rule, why,
                  {**{n: q.value(r) for n, r in best.items()},
                   "vs_none": above, "vs_layer": below})

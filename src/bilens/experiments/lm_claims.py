"""The seed's claims re-judged on language models, with the rules and thresholds of
`bilens.experiments.claims` (`claim_rules`; the noise rule of `stats`).

Input: `{"compare": compare_lm(...).to_dict(), "sweeps": {name: SweepResult.to_dict()},
"decomposition": {"records": [...]}}` (any part may be missing: its claims are then
`not measured`). The reference configuration is the **rms/pre** row (pre-norm RMSNorm is
the published bilinear LMs' layout), and the mode judged is **frozen-norm** (norms held,
attention live: the seed's proposal); every rule text says so. Each attribution claim is
judged for the table's target (`next`, the headline) and again for the `margin` target
(top-1 minus top-2 logit): the margin verdict sits under `claim["margin"]` and at the end
of `measured`.

The seed's claims 1-8 and 11 are `claims`' functions called with the `LM` view; claims 3
and 4 judge the held-out loss (`stats.LOSS`: lower is better, nats; the seed's 9 accuracy
points have no counterpart in nats, so only the direction of claim 3 is judged). Two claims
are new with attention:

- `attention_vs_norms`, "the norms carry the frozen error, not the attention patterns"
  (what holding the norms alone assumes): on the reference row the norm-drift part of the
  frozen error (`drift.ne_drift`) against the attention-pattern change (`drift.ne_attention`),
  and `frozen` (patterns held) against `frozen-norm` (patterns live), each pair compared by
  `DIFFER` beyond two pooled sd. `holds` if the norm drift is the larger part and releasing
  the patterns does not lower the error; `fails` if the pattern change is the larger part
  or releasing the patterns lowers the error, and the norm drift is not the larger; `partly`
  otherwise (both carry error, or the two measures disagree).
- `distance`, "the error grows with the distance p - t between a node and the target": the
  trend rule (`claim_rules.trend_rule`) over `frozen-norm.ne_by_distance`, softened to
  `partly` when only `live.ne_by_distance` rises steadily.

The seed's "without a norm attribution is perfect" and "drift is of the order of gating"
are not re-judged: without a norm the attention patterns still move, and the second is
`attention_vs_norms`' split with the attention part added.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bilens.core.units import num, pct
from bilens.experiments.accuracy_claims import claim_no_norm_accuracy, claim_rms_between
from bilens.experiments.claim_rules import (
    DIFFER,
    TREND,
    View,
    _claim,
    _differ,
    _missing,
    row_of,
    trend_rule,
    usable,
)
from bilens.experiments.claims import (
    claim_compounding,
    claim_d_model,
    claim_features,
    claim_layernorm,
    claim_position,
    claim_seed_error,
    claim_sparsity,
)
from bilens.experiments.stats import LOSS

MODE_NOTE = "frozen-norm (norms held, attention live: the seed's proposal) is the mode judged"
REFERENCE = ("language models: the rms/pre row is the reference (pre-norm, the published "
             f"bilinear LMs' layout) and {MODE_NOTE}")
COMPARE = "bilens compare --kind transformer"


def split_why(row: dict[str, Any], view: View) -> str:
    """The frozen error of a sequence model in its three parts (docs/lm-verification.md),
    beside the frozen-norm and live errors, for the view's target."""
    get = lambda name: row.get(view.path(name), math.nan)     # noqa: E731
    return (f"Of the frozen mode's error (norms and attention patterns held: NE "
            f"{pct(get('frozen.ne'))}), norm drift is NE {pct(get('drift.ne_drift'))}, the "
            f"attention-pattern change NE {pct(get('drift.ne_attention'))} and gating "
            f"interference NE {pct(get('drift.ne_gating'))} (the parts telescope to the "
            f"error, and can exceed it where they cancel). Holding the norms alone "
            f"(frozen-norm) gives NE {pct(get('frozen-norm.ne'))}, the exact gradient (live) "
            f"{pct(get('live.ne'))}.")


LM = View(family="lm", position="pre", mode="frozen-norm", second="drift.ne_drift",
          second_name="norm-drift NE", second_key="ne_drift",
          seed_from=("sparsity", "d_model", "compare"), seed_d_model=256, why=split_why)
MARGIN = replace(LM, target="margin")


def _verdict_attention(norms: bool, attention: bool) -> str:
    return "holds" if norms and not attention else "fails" if attention and not norms \
        else "partly"


def claim_attention(cmp: dict[str, Any], view: View = LM) -> dict[str, Any]:
    """New with attention (module docstring): which held statistic carries the error."""
    text = "The norms carry the frozen error, not the attention patterns"
    seed = "hold the norms (frozen-norm): attention needs no care"
    row = row_of(cmp["table"], norm="rms", position=view.position)
    paths = (view.drift, view.path("drift.ne_attention"), view.path("frozen.ne"), view.ne)
    if not usable([row], *paths):
        return _missing("attention_vs_norms", text, seed, COMPARE)
    d, a, f, fn = (row[p] for p in paths)
    split, rel_split = _differ(row, row, paths[0], paths[1])
    modes, rel_modes = _differ(row, row, paths[2], paths[3])
    norms, released = split and d > a, modes and fn < f
    verdict = _verdict_attention(norms, (split and a > d) or released)
    measured = (f"rms/{view.position}: norm-drift NE {pct(d)} vs attention-pattern change NE "
                f"{pct(a)} (relative difference {pct(rel_split, 0)}); frozen NE {pct(f)} vs "
                f"frozen-norm {pct(fn)} ({pct(rel_modes, 0)})")
    if verdict == "holds":
        why = ("The norm drift is the larger part, and releasing the patterns (frozen-norm) "
               "does not lower the error: the norms carry it.")
    elif verdict == "fails":
        why = ("The attention patterns carry the error: " + (
            f"releasing them lowers it from {pct(f)} to {pct(fn)}" if released else
            f"their change (NE {pct(a)}) is the larger part") + "; holding the norms alone, "
            "the seed's proposal, leaves the patterns' share of the error unexplained.")
    else:
        why = ("Both carry error of the same order: neither part is the larger by "
               f"{pct(DIFFER, 0)} beyond 2 pooled sd." if not split and not modes else
               "The two measures disagree: the norm drift is the larger part, but releasing "
               "the patterns lowers the error.")
    if modes and fn > f:
        inter = row.get(view.path("drift.ne_interaction"), math.nan)
        why += (f" Releasing the patterns makes the error larger (frozen-norm {pct(fn)} > "
                f"frozen {pct(f)}): norm drift and pattern change cancel in part in the real "
                f"network" + (f" (interaction NE {pct(inter)})" if math.isfinite(inter) else "")
                + ", so holding one of them is worse than holding both.")
    return _claim("attention_vs_norms", text, seed, verdict, measured,
                  f"the norm-drift and attention-change parts, and frozen vs frozen-norm NE, "
                  f"differ when by >= {pct(DIFFER, 0)} and > 2 pooled sd; holds if the "
                  f"norm-drift part is the larger and frozen-norm is not lower than frozen; "
                  f"fails if the attention part is the larger or frozen-norm is lower, and "
                  f"the norm-drift part is not the larger; partly otherwise", why,
                  {"ne_drift": d, "ne_attention": a, "frozen_ne": f, f"{view.mode}_ne": fn,
                   "rel_split": rel_split, "rel_modes": rel_modes})


def _by_distance(row: dict[str, Any] | None, path: str) -> dict[float, float]:
    pairs = (row or {}).get(path)
    return {float(p[0]): p[1] for p in pairs} if isinstance(pairs, list) else {}


def claim_distance(cmp: dict[str, Any], view: View = LM) -> dict[str, Any]:
    """New with attention (module docstring): the error against the distance `p - t`."""
    text = "The error grows with the distance p - t between a node and the target"
    seed = "not in the seed (attention carries a node's effect to later positions)"
    row = row_of(cmp["table"], norm="rms", position=view.position)
    ne = _by_distance(row, view.path(f"{view.mode}.ne_by_distance"))
    live = _by_distance(row, view.path("live.ne_by_distance"))
    xs = sorted(ne)
    ys, second = [ne[x] for x in xs], [live.get(x, math.nan) for x in xs]
    found = trend_rule(xs, ys, second, +1)
    if found is None:
        return _missing("distance", text, seed, f"{COMPARE} (NE by distance, >= 3 distances)")
    verdict, rho, rho_live = found
    m, mid = view.mode, xs[len(xs) // 2]
    measured = (f"rms/{view.position}: {m} NE at p - t = {xs[0]:g}: {pct(ys[0])}, {mid:g}: "
                f"{pct(ne[mid])}, {xs[-1]:g}: {pct(ys[-1])} ({len(xs)} distances); rank "
                f"correlation with the distance: {m} {num(rho, 2)}, live {num(rho_live, 2)}")
    span = f"from {pct(ys[0])} at p - t = {xs[0]:g} to {pct(ys[-1])} at {xs[-1]:g}"
    if verdict == "holds":
        why = (f"The {m} error grows steadily with the distance (rank correlation "
               f"{num(rho, 2)}), {span}: the further the node, the more positions and "
               f"layers its effect crosses before it reaches the target.")
    elif rho_live >= TREND:
        why = (f"The live error grows steadily with the distance (rank correlation "
               f"{num(rho_live, 2)}), the {m} error does not ({num(rho, 2)}; {span}).")
    else:
        why = (f"The {m} error does not grow steadily with the distance (rank correlation "
               f"{num(rho, 2)}; {span}).")
    return _claim("distance", text, seed, verdict, measured,
                  f"holds if {m} NE grows with p - t (rank corr >= {TREND:g} over the "
                  f"distances, lower at the smallest than at the largest); partly if only "
                  f"the live NE does, or rank corr >= {TREND / 2:g}", why,
                  {"distance": xs, f"{m}_ne": ys, "live_ne": second, "rho_ne": rho,
                   "rho_live": rho_live})


def _lm_needs(claim: dict[str, Any]) -> dict[str, Any]:
    """A `not measured` claim names the language-model experiment it needs."""
    if claim["verdict"] == "not measured":
        for key in ("rule", "why"):
            text = claim[key].replace("bilens compare --kind transformer", COMPARE)
            if COMPARE not in text:
                text = text.replace("bilens compare", COMPARE)
            for name in ("sparsity", "d_model", "depth"):
                text = text.replace(f"bilens sweep {name}",
                                    f"a language-model {name} sweep (sweep-lm-{name}.json)")
            claim[key] = text
    return claim


def _both(fn: Callable[[dict[str, Any], View], dict[str, Any]], data: dict[str, Any],
          note: str = REFERENCE) -> dict[str, Any]:
    """`fn` judged for the table's target (the claim) and the margin (`claim["margin"]`)."""
    claim, margin = _lm_needs(fn(data, LM)), _lm_needs(fn(data, MARGIN))
    claim["margin"] = {k: margin[k] for k in ("verdict", "measured", "why", "numbers")}
    if claim["verdict"] == "not measured":
        return claim
    claim["rule"] += f"; {note}"
    claim["measured"] += f"; margin target: {margin['verdict']}"
    if margin["verdict"] not in (claim["verdict"], "not measured"):
        claim["why"] = (f"{claim['why']} With the margin target (top-1 minus top-2 logit) the "
                        f"verdict is {margin['verdict']}: {margin['measured']}.").strip()
    return claim


def _loss_claim(fn: Callable[..., dict[str, Any]], cmp: dict[str, Any] | None,
                **kw: Any) -> dict[str, Any]:
    return _lm_needs(fn(cmp or {"table": []}, LOSS, **kw))


def claim_features_lm(lm: dict[str, Any]) -> dict[str, Any]:
    """Claim 11 on the language models' decomposition records (the `text` dataset's where
    there are any, else all)."""
    records = (lm.get("decomposition") or {}).get("records") or []
    text = any(r.get("dataset") == "text" for r in records)
    return claim_features(lm, dataset="text" if text else None,
                          needs="run decompose_models.decompose_compared on the "
                                "language-model comparison")


def evaluate_lm_claims(lm: dict[str, Any]) -> list[dict[str, Any]]:
    """Every language-model claim (module docstring), in the seed's order, then the two new
    ones, then claim 11.

    Args:
        lm: `{"compare": compare_lm(...).to_dict(), "sweeps": {name: SweepResult.to_dict()},
            "decomposition": {"records": [...]}}` (any part may be missing).

    Example:
        >>> evaluate_lm_claims({})[0]["verdict"]
        'not measured'
    """
    cmp = lm.get("compare") or {"table": []}
    results = {"compare": lm.get("compare"), "sweeps": lm.get("sweeps") or {}}
    return [_both(claim_layernorm, cmp), _both(claim_seed_error, results),
            _loss_claim(claim_no_norm_accuracy, lm.get("compare"), seed_gap=None),
            _loss_claim(claim_rms_between, lm.get("compare")),
            _both(claim_sparsity, results), _both(claim_d_model, results),
            _both(claim_compounding, results),
            _both(claim_position, cmp, f"language models: {MODE_NOTE}"),
            _both(claim_attention, cmp), _both(claim_distance, cmp), claim_features_lm(lm)]

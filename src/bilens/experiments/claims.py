"""The seed's quantitative claims, each beside what bilens measured, with a verdict.

Every verdict is computed from measured numbers by the explicit rules below; nothing is
hard-coded. A verdict is `holds`, `partly`, `fails`, or `not measured` (the experiment that
tests it was not run). Thresholds, all in one place:

- a point estimate "~X" *matches* a measurement within a factor `FACTOR` (2) either way;
- "small" attribution error means a normalized error (NE, docs/spec.md §5) at most `SMALL_NE` (5%),
  "tolerable" at most `TOLERABLE_NE` (15%);
- "X shrinks with Y" means a Spearman rank correlation of at least `TREND` (0.7) in the
  claimed direction over the sweep's points, *and* the last point below the first;
- two configurations "differ" when their NE differ by at least `DIFFER` (25%, relative)
  and by more than two pooled standard deviations over seeds;
- every accuracy comparison uses the one noise rule of `bilens.experiments.stats`: two
  means over seeds differ only when they are more than `NOISE_SD` (2) pooled standard
  deviations apart, and are "not distinguishable" otherwise; it compares against the best
  configuration, not a chosen one (claims 3 and 4, in `accuracy_claims`);
- claim 11, "normalization leaves weight-based features intact", has its rule in
  `bilens.experiments.decomposition` and is judged when the results carry decomposition
  records (`results["decomposition"]["records"]`, what `bilens demo` adds).

A "shrinks with sparsity" failure against the measured active fraction is softened to
`partly` when the error falls steadily with the L1 penalty itself (the knob), and the
report says which. Inputs: `CompareResult.to_dict()` and `SweepResult.to_dict()`.

The constants and the shared rules live in `bilens.experiments.claim_rules`; every claim
takes a `View` (default `MLP`: post-norm rows, the frozen mode), so
`bilens.experiments.lm_claims` judges the same claims on language models with the same
rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bilens.core.units import num, pct
from bilens.experiments.accuracy_claims import claim_no_norm_accuracy, claim_rms_between
from bilens.experiments.claim_rules import (
    DIFFER,
    FACTOR,
    MLP,
    SMALL_NE,
    TOLERABLE_NE,
    TREND,
    View,
    _claim,
    _differ,
    _drift_why,
    _missing,
    row_of,
    trend_rule,
    usable,
    within,
)
from bilens.experiments.stats import spearman

COUPLING_RANGE = (0.10, 0.50)        # the seed's "~10-50% coupling error" of LayerNorm
SEED_DRIFT = 0.006                   # the seed's "~0.6%" at d_model 256, ~10% active
SEED_ACTIVE = 0.10


# ------------------------------------------------------------------------ the claims


def claim_layernorm(cmp: dict[str, Any], view: View = MLP) -> dict[str, Any]:
    text, seed = "LayerNorm breaks attribution", "~10-50% coupling error"
    ln, rms = row_of(cmp["table"], norm="layer", position=view.position), \
        row_of(cmp["table"], norm="rms", position=view.position)
    if not (usable([ln, rms], view.ne) and usable([ln], view.drift, view.live)):
        return _missing("layernorm", text, seed, "bilens compare")
    coupling, ne_ln, ne_rms = ln[view.drift], ln[view.ne], rms[view.ne]
    broken = coupling >= COUPLING_RANGE[0]
    worse = ne_ln >= FACTOR * ne_rms
    verdict = "holds" if broken and worse else "partly" if broken or worse else "fails"
    measured = (f"LayerNorm ({view.position}) coupling error (norm-drift NE) {pct(coupling)}, "
                f"{view.mode} NE {pct(ne_ln)} vs RMSNorm {pct(ne_rms)}; live NE "
                f"{pct(ln[view.live])}")
    why = ""
    if verdict != "holds":
        why = (f"LayerNorm is broken, but so is {view.mode} RMSNorm: " if broken and not worse
               else "") + view.why(ln, view)
    if ln[view.live] <= TOLERABLE_NE:
        why += (f" The live (exact-gradient) attribution recovers LayerNorm: NE "
                f"{pct(ln[view.live])}.")
    return _claim("layernorm", text, seed, verdict, measured,
                  f"holds if coupling NE >= {pct(COUPLING_RANGE[0], 0)} and LayerNorm's "
                  f"{view.mode} NE >= {FACTOR:g} x RMSNorm's; partly if one of the two",
                  why.strip(),
                  {"coupling_ne": coupling, f"{view.mode}_ne_layer": ne_ln,
                   f"{view.mode}_ne_rms": ne_rms,
                   "in_seed_range": COUPLING_RANGE[0] <= coupling <= COUPLING_RANGE[1]})


def _seed_point(results: dict[str, Any], view: View = MLP) -> tuple[dict[str, Any] | None, str]:
    """The measurement closest to the seed's setting (d_model 256, ~10% active, RMSNorm at
    the view's position), from the first of `view.seed_from` that has one."""
    sweeps, pos = results.get("sweeps") or {}, view.position
    for source in view.seed_from:
        if source == "sparsity" and sweeps.get("sparsity"):
            rows = [r for r in sweeps["sparsity"]["table"]
                    if r["norm"] == "rms" and r["position"] == pos]
            if rows:
                best = min(rows, key=lambda r: abs(r["active_fraction"] - SEED_ACTIVE))
                return best, f"sparsity sweep point L1={best['x']:g}"
        if source == "d_model" and sweeps.get("d_model"):
            best = row_of(sweeps["d_model"]["table"], norm="rms", position=pos, x=256)
            if best:
                return best, "d_model sweep point 256"
        if source == "compare" and results.get("compare"):
            return row_of(results["compare"]["table"], norm="rms", position=pos), \
                f"compare, rms/{pos}"
    return None, ""


def claim_seed_error(results: dict[str, Any], view: View = MLP) -> dict[str, Any]:
    text = "Frozen-RMS error is small"
    seed = "~0.6% at d_model 256, ~10% active"
    row, source = _seed_point(results, view)
    if not usable([row], view.ne, "active_fraction"):
        return _missing("rms_error", text, seed, f"bilens sweep {view.seed_from[0]}")
    d_model = row.get("d_model", "?")
    ne, active = row[view.ne], row["active_fraction"]
    ds = row.get(view.path("drift.ds_over_s"), math.nan)
    verdict = ("holds" if ne <= FACTOR * SEED_DRIFT else
               "partly" if within(ds, SEED_DRIFT) else "fails")
    unmet = [f"{pct(active)} active channels, not ~10%"] \
        if abs(active - SEED_ACTIVE) > SEED_ACTIVE / 2 else []
    if view.seed_d_model is not None and d_model != view.seed_d_model:
        unmet.append(f"d_model {d_model}, not {view.seed_d_model}")
    note = "" if not unmet else (f" The seed's condition is not met: the closest model has "
                                 f"{', and '.join(unmet)}.")
    if unmet and verdict == "holds":
        verdict = "partly"
    measured = (f"{source} (d_model {d_model}, {pct(active)} active): {view.mode} NE "
                f"{pct(ne)}" + (f"; mean |ds/s| {pct(ds, 2)}" if view.family == "mlp"
                                or math.isfinite(ds) else ""))
    why = ""
    if verdict == "partly" and within(ds, SEED_DRIFT):
        why = ("The seed's number is right for what it computes, the relative change of the "
               "RMS, but that is not the attribution error. ") + view.why(row, view)
    elif verdict != "holds":
        why = view.why(row, view)
    return _claim("rms_error", text, seed, verdict, measured,
                  f"holds if {view.mode} NE <= {pct(FACTOR * SEED_DRIFT)} (0.6% within "
                  f"{FACTOR:g}x); partly if only |ds/s| is within {FACTOR:g}x of 0.6%",
                  (why + note).strip(),
                  {f"{view.mode}_ne": ne, "ds_over_s": ds, "active_fraction": active,
                   "effect_ratio": row.get("drift.effect_ratio", math.nan), "source": source})


def _trend(sweep: dict[str, Any], x_of: Callable[[dict], float], sign: int, cid: str,
           text: str, seed: str, xname: str, view: View = MLP) -> dict[str, Any]:
    """A 'shrinks with' claim: the view's NE (and its second quantity) against x over the
    sweep, by `claim_rules.trend_rule`."""
    rows = sorted((r for r in sweep["table"] if r["norm"] == "rms"
                   and r["position"] == view.position), key=x_of)
    xs = [x_of(r) for r in rows]
    ne = [r.get(view.ne, math.nan) for r in rows]
    drift = [r.get(view.path(view.second), math.nan) for r in rows]
    found = trend_rule(xs, ne, drift, sign)
    if found is None:
        return _missing(cid, text, seed, f"a {sweep['name']} sweep with >= 3 points")
    verdict, rho_ne, rho_ds = found
    m, sn = view.mode, view.second_name
    pairs = ", ".join(f"{num(x, 4)}: {pct(v)}" for x, v in zip(xs, ne, strict=False))
    measured = (f"{m} NE by {xname} ({pairs}); rank correlation in the claimed direction "
                f"(1: falls steadily): error {num(rho_ne, 2)}, {sn} {num(rho_ds, 2)}")
    span = (f"from {xname} {num(xs[0], 4)} to {num(xs[-1], 4)} the error goes "
            f"{pct(ne[0])} -> {pct(ne[-1])} and {sn} {pct(drift[0], 2)} -> "
            f"{pct(drift[-1], 2)}")
    if verdict == "holds":
        why = (f"The {m} error falls steadily toward the claimed end (rank correlation "
               f"{num(rho_ne, 2)}): {span}. It shrinks, but a trend is not a size: the "
               f"smallest error here is {pct(min(ne))}.")
    else:
        why = (f"The norm's drift follows the seed but the attribution error does not: {span}."
               if rho_ds >= TREND else f"Neither the error nor the drift falls steadily: {span}.")
    return _claim(cid, text, seed, verdict, measured,
                  f"holds if {m} NE falls with {xname} (rank corr >= {TREND:g}, lower "
                  f"at the claimed end than at the other);"
                  f" partly if only {sn} does, or rank corr >= {TREND / 2:g}", why,
                  {"x": xs, f"{m}_ne": ne, view.second_key: drift, "rho_ne": rho_ne,
                   "rho_ds": rho_ds})


def claim_sparsity(results: dict[str, Any], view: View = MLP) -> dict[str, Any]:
    text, seed = "Error shrinks with sparsity", "sparse delta h: fewer active channels"
    sp = (results.get("sweeps") or {}).get("sparsity")
    if not sp:
        return _missing("sparsity", text, seed, "bilens sweep sparsity")
    claim = _trend(sp, lambda r: r["active_fraction"], +1, "sparsity", text, seed,
                   "active fraction", view)
    # The L1 penalty is the knob; the active fraction is what it measurably does. When the
    # error falls with the penalty but not with the measured fraction, say so (partly).
    rows = [r for r in sp["table"] if r["norm"] == "rms" and r["position"] == view.position]
    rho_l1 = -spearman([float(r["x"]) for r in rows], [r.get(view.ne, math.nan) for r in rows])
    rho_act = spearman([float(r["x"]) for r in rows], [r["active_fraction"] for r in rows])
    claim["numbers"].update(rho_ne_vs_l1=rho_l1, rho_active_vs_l1=rho_act)
    claim["measured"] += (f"; against the L1 penalty: error rank correlation {num(-rho_l1, 2)}, "
                          f"active fraction {num(rho_act, 2)}")
    if claim["verdict"] == "fails" and rho_l1 >= TREND:
        claim["verdict"] = "partly"
        claim["why"] = (f"The error falls steadily as the L1 penalty grows (rank correlation "
                        f"{num(-rho_l1, 2)}), but the measured active fraction does not fall "
                        f"with the penalty in step (rank correlation {num(rho_act, 2)}), so "
                        f"error and active fraction do not line up: the penalty shrinks |z| "
                        f"and the error more than it reduces the count of active channels.")
    claim["rule"] += (f"; a failure becomes partly if the error falls with the L1 penalty "
                      f"(rank corr >= {TREND:g})")
    return claim


def claim_d_model(results: dict[str, Any], view: View = MLP) -> dict[str, Any]:
    text, seed = "Error shrinks with d_model", "RMS averages over more dims (~1/sqrt(d))"
    dm = (results.get("sweeps") or {}).get("d_model")
    if not dm:
        return _missing("d_model", text, seed, "bilens sweep d_model")
    return _trend(dm, lambda r: float(r["x"]), -1, "d_model", text, seed, "d_model", view)


def claim_compounding(results: dict[str, Any], view: View = MLP) -> dict[str, Any]:
    text, seed = "Compounding across layers stays small", "compounds but stays small"
    dp = (results.get("sweeps") or {}).get("depth")
    if not dp:
        return _missing("compounding", text, seed, "bilens sweep depth")
    rows = sorted((r for r in dp["table"] if r["norm"] == "rms"
                   and r["position"] == view.position), key=lambda r: r["x"])
    if len(rows) < 2 or not usable(rows, view.drift, view.ne):
        return _missing("compounding", text, seed, "a depth sweep with >= 2 depths")
    deep, shallow, m = rows[-1], rows[0], view.mode
    drift_deep = deep[view.drift]
    verdict = ("holds" if drift_deep <= SMALL_NE else
               "partly" if drift_deep <= TOLERABLE_NE else "fails")
    per_layer = deep.get(view.path("drift.ne_drift_per_layer"), [])
    column = ("; the depth table's per-layer column is the total frozen NE"
              if view.family == "mlp" else "")
    measured = (f"norm-drift NE {pct(shallow[view.drift])} at {shallow['x']} layer(s), "
                f"{pct(drift_deep)} at {deep['x']}; total {m} NE "
                f"{pct(shallow[view.ne])} -> {pct(deep[view.ne])}; norm-drift part "
                f"of the frozen NE per layer of the deepest (first to last{column}): "
                + ", ".join(pct(v) for v in per_layer))
    why = "" if verdict == "holds" else view.why(deep, view)
    return _claim("compounding", text, seed, verdict, measured,
                  f"holds if the norm-drift NE of the deepest model <= {pct(SMALL_NE, 0)}; "
                  f"partly if <= {pct(TOLERABLE_NE, 0)}", why,
                  {"depths": [r["x"] for r in rows], "ne_drift": [r[view.drift] for r in rows],
                   f"{m}_ne": [r[view.ne] for r in rows], "per_layer_deepest": per_layer})


def claim_position(cmp: dict[str, Any], view: View = MLP) -> dict[str, Any]:
    text, seed = "Pre- and post-norm differ", "may have different error characteristics"
    t = cmp["table"]
    pairs = {n: (row_of(t, norm=n, position="post"), row_of(t, norm=n, position="pre"))
             for n in ("rms", "layer")}
    if not usable([r for pair in pairs.values() for r in pair], view.ne, view.live):
        return _missing("position", text, seed, "bilens compare")
    m = view.mode
    found = {n: _differ(a, b, view.ne) for n, (a, b) in pairs.items()}
    live = {n: _differ(a, b, view.live) for n, (a, b) in pairs.items()}
    verdict = ("holds" if found["rms"][0] else
               "partly" if found["layer"][0] or live["rms"][0] else "fails")
    measured = "; ".join(
        f"{n}: {m} NE post {pct(a[view.ne])} vs pre {pct(b[view.ne])} "
        f"(live {pct(a[view.live])} vs {pct(b[view.live])})" for n, (a, b) in pairs.items())
    why = "" if verdict == "holds" else (
        f"For RMSNorm the {m} error is about the same in both positions (relative "
        f"difference {pct(found['rms'][1], 0)}, threshold {pct(DIFFER, 0)} beyond 2 pooled sd).")
    return _claim("position", text, seed, verdict, measured,
                  f"holds if RMSNorm's {m} NE differs by >= {pct(DIFFER, 0)} and > 2 pooled sd "
                  f"between positions; partly if only LayerNorm's, or only the live NE, does",
                  why, {n: {f"rel_{m}": found[n][1], "rel_live": live[n][1]} for n in found})


def claim_none_perfect(cmp: dict[str, Any]) -> dict[str, Any]:
    text, seed = "Without a norm, attribution is perfect", "None: perfect"
    row = row_of(cmp["table"], norm="none", position="post")
    if row is None:
        return _missing("none_perfect", text, seed, "bilens compare")
    ne = row["frozen.ne"]
    verdict = "holds" if ne <= SMALL_NE / 5 else "partly" if ne <= TOLERABLE_NE else "fails"
    measured = (f"no norm: NE {pct(ne, 2)} (all of it gating interference; drift NE "
                f"{pct(row['drift.ne_drift'], 2)}), Pearson {num(row['frozen.pearson'], 4)}, "
                f"top-10 recall {pct(row['frozen.top10'])}")
    why = "" if verdict == "holds" else (
        "Without a norm nothing drifts, but the bilinear layers downstream of the ablated "
        "channel still respond to it quadratically (gating interference), which a "
        "linearization cannot capture.")
    return _claim("none_perfect", text, seed, verdict, measured,
                  f"holds if NE <= {pct(SMALL_NE / 5, 0)}; partly if <= {pct(TOLERABLE_NE, 0)}",
                  why, {"frozen_ne": ne})


def claim_drift_vs_gating(cmp: dict[str, Any]) -> dict[str, Any]:
    text = "RMS freezing error is of the order of the gating interference"
    seed = "similar order of magnitude"
    row = row_of(cmp["table"], norm="rms", position="post")
    if row is None:
        return _missing("drift_vs_gating", text, seed, "bilens compare")
    d, g = row["drift.ne_drift"], row["drift.ne_gating"]
    ratio = d / g if g > 0 else math.inf
    verdict = ("holds" if 0.1 <= ratio <= 10 else "partly" if ratio < 0.1 else "fails")
    measured = (f"rms/post: drift NE {pct(d)} vs gating NE {pct(g)} (ratio {num(ratio, 3)}); "
                f"drift share {pct(row['drift.drift_share'])}")
    why = {"holds": "", "partly": "Norm drift is far smaller than the gating interference: "
           "better than the seed says.", "fails": _drift_why(row)}[verdict]
    return _claim("drift_vs_gating", text, seed, verdict, measured,
                  "holds if drift NE / gating NE lies in [0.1, 10]; partly if below 0.1",
                  why, {"ratio": ratio})


def claim_features(results: dict[str, Any], dataset: str | None = None,
                   needs: str = "run bilens demo (digits) or benchmarks/decomposition_table.py"
                   ) -> dict[str, Any]:
    """Claim 11 (issue 16), judged by `bilens.experiments.decomposition` on the results'
    decomposition records (`results["decomposition"]`: the MLP models', or, as
    `lm_claims` calls it, the transformers' `lm["decomposition"]`; those of `dataset`, or
    all); `not measured` without them, and `needs` says what to run."""
    from bilens.experiments.decomposition import claim_features_intact

    records = (results.get("decomposition") or {}).get("records") or []
    claim = claim_features_intact(records, dataset=dataset)
    claim["claim"] = claim["claim"][:1].upper() + claim["claim"][1:]
    if claim["verdict"] == "not measured":
        claim["why"] = needs
    return claim


def evaluate_claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every claim, in the seed's order, then the decomposition's (claim 11).

    Args:
        results: `{"compare": CompareResult.to_dict(), "sweeps": {name: SweepResult.to_dict()},
            "decomposition": {"records": [...]}}` (any
            part may be missing: its claims are then `not measured`).
    """
    cmp = results.get("compare")
    out = []
    for fn, needs_cmp in ((claim_layernorm, True), (claim_seed_error, False),
                          (claim_no_norm_accuracy, True), (claim_rms_between, True),
                          (claim_sparsity, False), (claim_d_model, False),
                          (claim_compounding, False), (claim_position, True),
                          (claim_none_perfect, True), (claim_drift_vs_gating, True),
                          (claim_features, False)):
        if needs_cmp and not cmp:
            name = fn.__name__.removeprefix("claim_")
            out.append(_missing(name, name.replace("_", " "), "-", "bilens compare"))
        else:
            out.append(fn(cmp if needs_cmp else results))
    return out

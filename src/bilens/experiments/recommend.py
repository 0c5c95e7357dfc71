"""Which norm, position and attribution mode to use, and the error to expect, read off a
comparison (`CompareResult.to_dict()`).

Rule: among the configurations as accurate as the best one (within `ACC_TOLERANCE` of its
mean test accuracy, a practical margin, or not distinguishable from it by the one noise
rule of `bilens.experiments.stats`: at most 2 pooled seed sd apart), pick the one whose
better attribution mode has the lowest normalized error; that mode is the recommendation.
Modes whose errors tie (without a norm all three coincide) resolve by `TIE_PREFERENCE`.

Example:
    >>> recommend(cmp.to_dict())["mode"]                 # doctest: +SKIP
    'live'
"""

from __future__ import annotations

import math
from typing import Any

from bilens.core.units import fixed, pct
from bilens.experiments.stats import MODES, NOISE_SD, modes_in, noise_compare, targets_in

ACC_TOLERANCE = 0.01   # configurations within 1 pp (or noise) of the best count as accurate
TIE_PREFERENCE = ("live", "renorm", "frozen")   # exact gradient first: it assumes nothing
TIE_TOLERANCE = 1e-3                             # NEs this close (relative) count as a tie
NOTHING = "No comparison was run: nothing to recommend."


def _best_mode(row: dict[str, Any]) -> str:
    """The mode with the lowest NE on this row; on a tie (without a norm all three coincide)
    the first of `TIE_PREFERENCE`, so a tie never recommends the frozen linearization."""
    def ne(m: str) -> float:
        v = row.get(f"{m}.ne", math.nan)
        return v if isinstance(v, float) and math.isfinite(v) else math.inf
    best = min(ne(m) for m in MODES)
    if math.isinf(best):
        return MODES[0]
    return next(m for m in TIE_PREFERENCE if ne(m) <= best * (1 + TIE_TOLERANCE))


def as_accurate(row: dict[str, Any], best: dict[str, Any]) -> bool:
    """`row` counts as accurate as `best`: within `ACC_TOLERANCE`, or not distinguishable
    from it by the noise rule (`stats.noise_compare`)."""
    found = noise_compare(best["test_accuracy"], best.get("test_accuracy_std", math.nan),
                          int(best.get("n_seeds", 1)), row["test_accuracy"],
                          row.get("test_accuracy_std", math.nan), int(row.get("n_seeds", 1)))
    return found["diff"] <= ACC_TOLERANCE or found["verdict"] == "not distinguishable"


def _most_faithful(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rows, key=lambda r: r[f"{_best_mode(r)}.ne"])


def recommend(cmp: dict[str, Any]) -> dict[str, Any]:
    """The recommendation (see the module's rule) with the sentences that explain it.

    Returns:
        `{"norm", "position", "mode", "config", "expected_ne", "expected_pearson",
        "expected_top10", "test_accuracy", "accuracy_tolerance", "live_wins", "text"}`, or
        only `{"text"}` when no configuration has a finite accuracy.
    """
    table = [r for r in cmp["table"] if math.isfinite(r["test_accuracy"])]
    if not table:
        return {"text": [NOTHING]}
    best = max(table, key=lambda r: r["test_accuracy"])
    best_acc = best["test_accuracy"]
    choice = _most_faithful([r for r in table if as_accurate(r, best)])
    mode = _best_mode(choice)
    live_wins = sum(r["live.ne"] < r["frozen.ne"] * (1 - 1e-6) for r in table)
    target = cmp.get("settings", {}).get("target", "predicted")
    text = [*_choice_text(choice, mode, table, best, live_wins, target),
            *_norm_text(choice, table), *_faithful_text(choice, table, best_acc),
            *_target_text(table)]
    return {"norm": choice["norm"], "position": choice["position"], "mode": mode,
            "config": f"{choice['norm']}/{choice['position']}",
            "expected_ne": choice[f"{mode}.ne"],
            "expected_pearson": choice[f"{mode}.pearson"],
            "expected_top10": choice[f"{mode}.top10"], "test_accuracy": choice["test_accuracy"],
            "accuracy_tolerance": ACC_TOLERANCE, "live_wins": live_wins,
            "target": target, "text": text}


def _choice_text(choice: dict[str, Any], mode: str, table: list[dict[str, Any]],
                 best: dict[str, Any], live_wins: int, target: str) -> list[str]:
    """What to use, the error to expect, and how the modes compare over the table."""
    others = ", ".join(f"mode={m} gives NE {pct(choice[f'{m}.ne'])}"
                       for m in modes_in(table) if m != mode)
    ties = sum(abs(r["live.ne"] - r["frozen.ne"]) <= 1e-6 * abs(r["frozen.ne"]) for r in table)
    text = [
        f"Use norm={choice['norm']}, position={choice['position']}: test accuracy "
        f"{pct(choice['test_accuracy'], 2)} (best of all: {best['norm']}/{best['position']} "
        f"{pct(best['test_accuracy'], 2)}; configurations within {100 * ACC_TOLERANCE:.1f} pp "
        f"of it, or not distinguishable from it ({NOISE_SD:g} pooled seed sd), count as "
        f"equally accurate).",
        f"Attribute with mode={mode}: expected normalized error {pct(choice[f'{mode}.ne'])}, "
        f"Pearson {fixed(choice[f'{mode}.pearson'])}, top-10 recall "
        f"{pct(choice[f'{mode}.top10'], 0)} against the real ablations (target {target}); "
        f"{others} on the same model.",
        f"The live mode beats the frozen (seed) mode in {live_wins} of {len(table)} "
        f"configurations" + (f"; they tie in {ties} (without a norm the two modes coincide)."
                             if ties else "."),
    ]
    if "renorm" in modes_in(table):
        wins = sum(r["renorm.ne"] < r["live.ne"] * (1 - 1e-6) for r in table)
        text.append(f"The renorm mode (live, with the first norm an ablation reaches made "
                    f"exact) beats the live mode in {wins} of {len(table)}.")
    return text


def _norm_text(choice: dict[str, Any], table: list[dict[str, Any]]) -> list[str]:
    """When the choice has no norm: the same rule among the configurations with one (for a
    user who needs a norm for depth or stability)."""
    normed = [r for r in table if r["norm"] != "none"]
    if choice["norm"] != "none" or not normed:
        return []
    best_n = max(normed, key=lambda r: r["test_accuracy"])
    alt = _most_faithful([r for r in normed if as_accurate(r, best_n)])
    am = _best_mode(alt)
    return [f"If the network needs a norm: norm={alt['norm']}, position="
            f"{alt['position']} with mode={am} (NE {pct(alt[f'{am}.ne'])}, Pearson "
            f"{fixed(alt[f'{am}.pearson'])}, top-10 recall {pct(alt[f'{am}.top10'], 0)}; "
            f"accuracy {pct(alt['test_accuracy'], 2)}); its frozen mode gives NE "
            f"{pct(alt['frozen.ne'])}."]


def _faithful_text(choice: dict[str, Any], table: list[dict[str, Any]],
                   best_acc: float) -> list[str]:
    """The most faithful configuration of all, when it is not the choice."""
    faithful = _most_faithful(table)
    if faithful is choice:
        return []
    fm = _best_mode(faithful)
    gap = 100 * (best_acc - faithful["test_accuracy"])
    return [f"The most faithful configuration is {faithful['norm']}/"
            f"{faithful['position']} (mode={fm}, NE {pct(faithful[f'{fm}.ne'])}), at "
            f"{gap:.2f} pp below the best accuracy: prefer it when faithfulness "
            f"matters more than that."]


def _target_text(table: list[dict[str, Any]]) -> list[str]:
    """The frozen mode's error under each extra target (the margin), beside the table's:
    the frozen headline depends on the target."""
    out = []
    for t in targets_in(table):
        rows = [r for r in table if r["norm"] != "none"
                and math.isfinite(r.get(f"{t}.frozen.ne", math.nan))]
        if not rows:
            continue
        pairs = ", ".join(f"{r['norm']}/{r['position']} {pct(r['frozen.ne'])} -> "
                          f"{pct(r[f'{t}.frozen.ne'])}" for r in rows)
        best = {m: min(r.get(f"{t}.{m}.ne", math.inf) for r in rows) for m in modes_in(table)}
        out.append(f"Every number above explains the comparison's target; with the {t} target "
                   f"(top-1 minus top-2 logit) the frozen NE is, per normalized configuration, "
                   f"{pairs}; the lowest NE per mode there: "
                   + ", ".join(f"{m} {pct(v)}" for m, v in best.items()) + ".")
    return out

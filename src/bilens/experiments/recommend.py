"""Which norm, position and attribution mode to use, and the error to expect, read off a
comparison (`CompareResult.to_dict()`).

Rule: among the configurations as accurate as the best one (within `ACC_TOLERANCE` of its
mean test accuracy, a practical margin, or not distinguishable from it by the one noise
rule of `bilens.experiments.stats`: at most 2 pooled seed sd apart), pick the one whose
better attribution mode has the lowest normalized error; that mode is the recommendation.
Modes whose errors tie (without a norm all three coincide) resolve by `TIE_PREFERENCE`.

`recommend_lm` applies the same rule to a language-model comparison (`compare_lm`): the
quality is the held-out loss (lower is better, within `LOSS_TOLERANCE` nats, or not
distinguishable by the same noise rule), the modes are the four sequence-model ones, ties
resolve by `LM_TIE_PREFERENCE`. `combine` sets the two families' recommendations side by
side and says where they agree (norm, position, mode).

Example:
    >>> recommend(cmp.to_dict())["mode"]                 # doctest: +SKIP
    'live'
"""

from __future__ import annotations

import math
from typing import Any

from bilens.core.units import fixed, pct
from bilens.experiments.stats import (
    ACCURACY,
    LM_MODES,
    LOSS,
    MODES,
    NOISE_SD,
    Quality,
    modes_in,
    targets_in,
)

ACC_TOLERANCE = 0.01   # configurations within 1 pp (or noise) of the best count as accurate
LOSS_TOLERANCE = 0.01  # nats (about 1% perplexity): within it (or noise) of the lowest loss
TIE_PREFERENCE = ("live", "renorm", "frozen")   # exact gradient first: it assumes nothing
LM_TIE_PREFERENCE = ("live", "renorm", "frozen-norm", "frozen")
TIE_TOLERANCE = 1e-3                             # NEs this close (relative) count as a tie
NOTHING = "No comparison was run: nothing to recommend."


def _best_mode(row: dict[str, Any], modes: tuple[str, ...] = MODES,
               preference: tuple[str, ...] = TIE_PREFERENCE) -> str:
    """The mode of `modes` with the lowest NE on this row; on a tie (without a norm the
    modes coincide) the first of `preference`, so a tie never recommends a frozen
    linearization."""
    def ne(m: str) -> float:
        v = row.get(f"{m}.ne", math.nan)
        return v if isinstance(v, float) and math.isfinite(v) else math.inf
    best = min(ne(m) for m in modes)
    if math.isinf(best):
        return modes[0]
    return next(m for m in preference if ne(m) <= best * (1 + TIE_TOLERANCE))


def as_accurate(row: dict[str, Any], best: dict[str, Any], quality: Quality = ACCURACY,
                tolerance: float = ACC_TOLERANCE) -> bool:
    """`row` counts as good as `best`: within `tolerance` (in the quality's own scale: a
    fraction of accuracy, nats of loss), or not distinguishable from it by the noise rule
    (`stats.noise_compare`)."""
    found = quality.compare(best, row)
    short = found["diff"] if quality.higher else -found["diff"]
    return short <= tolerance or found["verdict"] == "not distinguishable"


def _most_faithful(rows: list[dict[str, Any]], modes: tuple[str, ...] = MODES,
                   preference: tuple[str, ...] = TIE_PREFERENCE) -> dict[str, Any]:
    return min(rows, key=lambda r: r[f"{_best_mode(r, modes, preference)}.ne"])


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
    choice = _most_faithful([r for r in table if as_accurate(r, best)])
    mode = _best_mode(choice)
    live_wins = sum(r["live.ne"] < r["frozen.ne"] * (1 - 1e-6) for r in table)
    target = cmp.get("settings", {}).get("target", "predicted")
    text = [*_choice_text(choice, mode, table, best, live_wins, target),
            *_norm_text(choice, table), *_faithful_text(choice, table, best),
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


def _norm_text(choice: dict[str, Any], table: list[dict[str, Any]], q: Quality = ACCURACY,
               tolerance: float = ACC_TOLERANCE, modes: tuple[str, ...] = MODES,
               preference: tuple[str, ...] = TIE_PREFERENCE) -> list[str]:
    """When the choice has no norm: the same rule among the configurations with one (for a
    user who needs a norm for depth or stability)."""
    normed = [r for r in table if r["norm"] != "none"]
    if choice["norm"] != "none" or not normed:
        return []
    best_n = q.best(normed)
    alt = _most_faithful([r for r in normed if as_accurate(r, best_n, q, tolerance)], modes,
                         preference)
    am = _best_mode(alt, modes, preference)
    return [f"If the network needs a norm: norm={alt['norm']}, position="
            f"{alt['position']} with mode={am} (NE {pct(alt[f'{am}.ne'])}, Pearson "
            f"{fixed(alt[f'{am}.pearson'])}, top-10 recall {pct(alt[f'{am}.top10'], 0)}; "
            f"{q.name} {q.show(q.value(alt))}); its frozen mode gives NE "
            f"{pct(alt['frozen.ne'])}."]


def _faithful_text(choice: dict[str, Any], table: list[dict[str, Any]],
                   best: dict[str, Any], q: Quality = ACCURACY, modes: tuple[str, ...] = MODES,
                   preference: tuple[str, ...] = TIE_PREFERENCE) -> list[str]:
    """The most faithful configuration of all, when it is not the choice."""
    faithful = _most_faithful(table, modes, preference)
    if faithful is choice:
        return []
    fm = _best_mode(faithful, modes, preference)
    return [f"The most faithful configuration is {faithful['norm']}/"
            f"{faithful['position']} (mode={fm}, NE {pct(faithful[f'{fm}.ne'])}), at "
            f"{q.amount(q.gain(best, faithful))} {q.below} the best {q.name}: prefer it when "
            f"faithfulness matters more than that."]


def _target_text(table: list[dict[str, Any]], modes: tuple[str, ...] = MODES) -> list[str]:
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
        best = {m: min(r.get(f"{t}.{m}.ne", math.inf) for r in rows)
                for m in modes_in(table, modes)}
        out.append(f"Every number above explains the comparison's target; with the {t} target "
                   f"(top-1 minus top-2 logit) the frozen NE is, per normalized configuration, "
                   f"{pairs}; the lowest NE per mode there: "
                   + ", ".join(f"{m} {pct(v)}" for m, v in best.items()) + ".")
    return out


def recommend_lm(cmp_lm: dict[str, Any]) -> dict[str, Any]:
    """`recommend`'s rule on a language-model comparison (`compare_lm(...).to_dict()`): among
    the configurations whose held-out loss is within `LOSS_TOLERANCE` nats of the lowest
    (or not distinguishable from it), the one whose best of the four modes has the lowest NE.

    Returns:
        `{"norm", "position", "mode", "config", "expected_ne", "expected_pearson",
        "expected_top10", "test_loss", "perplexity", "loss_tolerance", "wins", "target",
        "text"}`, or only `{"text"}` when no configuration has a finite loss.

    Example:
        >>> recommend_lm(compare_lm("synthetic-lm").to_dict())["mode"]    # doctest: +SKIP
        'renorm'
    """
    q, modes, pref = LOSS, LM_MODES, LM_TIE_PREFERENCE
    table = [r for r in cmp_lm.get("table", []) if math.isfinite(q.value(r))]
    if not table:
        return {"text": [NOTHING]}
    best = q.best(table)
    choice = _most_faithful([r for r in table if as_accurate(r, best, q, LOSS_TOLERANCE)],
                            modes, pref)
    mode = _best_mode(choice, modes, pref)
    target = cmp_lm.get("settings", {}).get("target", "next")
    wins = {f"{a}>{b}": sum(r.get(f"{a}.ne", math.inf) < r.get(f"{b}.ne", math.nan) * (1 - 1e-6)
                            for r in table)
            for a, b in (("live", "frozen"), ("live", "frozen-norm"), ("renorm", "live"))}
    text = [*_lm_choice_text(choice, mode, table, best, wins, target),
            *_norm_text(choice, table, q, LOSS_TOLERANCE, modes, pref),
            *_faithful_text(choice, table, best, q, modes, pref), *_target_text(table, modes)]
    return {"norm": choice["norm"], "position": choice["position"], "mode": mode,
            "config": f"{choice['norm']}/{choice['position']}",
            "expected_ne": choice[f"{mode}.ne"],
            "expected_pearson": choice.get(f"{mode}.pearson", math.nan),
            "expected_top10": choice.get(f"{mode}.top10", math.nan),
            "test_loss": choice["test_loss"], "perplexity": choice.get("perplexity", math.nan),
            "loss_tolerance": LOSS_TOLERANCE, "wins": wins, "target": target, "text": text}


def _lm_choice_text(choice: dict[str, Any], mode: str, table: list[dict[str, Any]],
                    best: dict[str, Any], wins: dict[str, int], target: str) -> list[str]:
    """What to use, the error to expect, and how the four modes compare over the table."""
    others = ", ".join(f"mode={m} gives NE {pct(choice[f'{m}.ne'])}"
                       for m in modes_in(table, LM_MODES) if m != mode)
    n = len(table)
    ties = sum(abs(r.get("live.ne", math.nan) - r.get("frozen-norm.ne", math.nan))
               <= 1e-6 * abs(r.get("frozen-norm.ne", math.nan)) for r in table)
    return [
        f"Use norm={choice['norm']}, position={choice['position']}: held-out loss "
        f"{LOSS.show(choice['test_loss'])} (lowest of all: {best['norm']}/{best['position']} "
        f"{LOSS.show(best['test_loss'])}; configurations within {LOSS_TOLERANCE:g} nats of "
        f"it, or not distinguishable from it ({NOISE_SD:g} pooled seed sd), count as "
        f"equally good).",
        f"Attribute with mode={mode}: expected normalized error {pct(choice[f'{mode}.ne'])}, "
        f"Pearson {fixed(choice.get(f'{mode}.pearson', math.nan))}, top-10 recall "
        f"{pct(choice.get(f'{mode}.top10', math.nan), 0)} against the real ablations "
        f"(target {target}); {others} on the same model.",
        f"The exact gradient (live) beats the frozen mode (norms and attention patterns held: "
        f"RelP / circuit-tracer) in {wins['live>frozen']} of {n} configurations and "
        f"frozen-norm (norms held, attention live: the seed's proposal) in "
        f"{wins['live>frozen-norm']} of {n}" + (f" (they tie in {ties}: without a norm "
                                               f"there is nothing to hold)" if ties else "")
        + f"; renorm beats live in {wins['renorm>live']} of {n}.",
    ]


FIELDS = ("norm", "position", "mode")


def combine(mlp_rec: dict[str, Any], lm_rec: dict[str, Any]) -> dict[str, Any]:
    """The MLP networks' recommendation (`recommend`) beside the language models'
    (`recommend_lm`): where they agree on norm, position and mode, one setting serves both.

    Returns:
        `{"agree": bool, "norm" | "position" | "mode": {"mlp", "lm", "agree"}, "text"}`;
        a position's `agree` is None (it does not count) when either side has no norm, one
        network in both positions; `agree` False, and only a sentence, when either
        recommendation is missing.
    """
    absent = [name for name, rec in (("MLP", mlp_rec), ("language-model", lm_rec))
              if "mode" not in (rec or {})]
    if absent:
        return {"agree": False, "text": [f"No combined recommendation: no {' or '.join(absent)} "
                                         f"comparison to recommend from."]}
    fields = {f: {"mlp": mlp_rec[f], "lm": lm_rec[f], "agree": mlp_rec[f] == lm_rec[f]}
              for f in FIELDS}
    if "none" in (mlp_rec["norm"], lm_rec["norm"]):      # no norm: one network, no position
        fields["position"]["agree"] = None
    agree = all(v["agree"] is not False for v in fields.values())
    sides = (f"MLP: {mlp_rec['config']} mode={mlp_rec['mode']}, expected NE "
             f"{pct(mlp_rec['expected_ne'])}, test accuracy "
             f"{ACCURACY.show(mlp_rec['test_accuracy'])}; language model: {lm_rec['config']} "
             f"mode={lm_rec['mode']}, expected NE {pct(lm_rec['expected_ne'])}, held-out loss "
             f"{LOSS.show(lm_rec['test_loss'])}")
    if agree:
        where = "" if fields["position"]["agree"] is None else \
            f", position={mlp_rec['position']}"
        text = [f"Both families agree: norm={mlp_rec['norm']}{where}, mode={mlp_rec['mode']} "
                f"({sides})."]
    else:
        same = [f"{f}={mlp_rec[f]}" for f in FIELDS if fields[f]["agree"]]
        diff = [f"{f} (MLP {mlp_rec[f]}, language model {lm_rec[f]})"
                for f in FIELDS if fields[f]["agree"] is False]
        text = [(f"The families agree on {', '.join(same)} and differ on " if same else
                 "The families differ on ") + " and ".join(diff) + f" ({sides}).",
                "No one setting is best for both: follow the MLP comparison for MLP networks "
                "and the language-model comparison for transformers."]
    ratio = lm_rec["expected_ne"] / mlp_rec["expected_ne"] if mlp_rec["expected_ne"] else math.inf
    if math.isfinite(ratio) and ratio != 1:
        text.append(f"Expect a {'larger' if ratio > 1 else 'smaller'} error on language "
                    f"models: {ratio:.1f}x the MLP's expected NE, each family with its "
                    f"recommended mode.")
    return {"agree": agree, **fields, "text": text}

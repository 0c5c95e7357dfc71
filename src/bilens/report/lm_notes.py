"""The language-model section's sentences, for a reader who has not read the seed: what was
compared and how it was measured (`lm_intro`), what each attribution mode holds
(`MODE_WORDS`), what the error split means (`SPLIT_NOTE`), what a sweep varied and shows
(`lm_sweep_settings`, `lm_sweep_note`). Every count and number is computed from the
comparison's `settings` and table; the HTML page and the Markdown share them.

Example:
    >>> reachable_nodes({"n_verify": 16, "verify_len": 32, "target": "next",
    ...                  "model": {"n_layers": 2, "d_hidden": 64}})
    33792
"""

from __future__ import annotations

from typing import Any

from bilens.core.units import pct
from bilens.report.lm_tables import lm_modes_in

MODE_WORDS = {
    "frozen": "every norm's statistic and every attention pattern held at its clean value, "
              "so that only the bilinear MLPs are nonlinear: the linearization of RelP and "
              "circuit-tracer.",
    "frozen-norm": "the norms' statistics held, the attention patterns live (their gradient "
                   "counted): the seed's proposal.",
    "live": "nothing held: the true gradient (attribution patching).",
    "renorm": "the true gradient with the first norm the ablation reaches recomputed "
              "exactly, in closed form: bilens's.",
}
TARGET_WORDS = {
    "next": "the log-probability of the true next token at the last position",
    "margin": "the top-1 minus top-2 logit at the last position",
    "mean-logprob": "the mean over positions of the next token's log-probability",
}
DATASET_WORDS = {
    "synthetic-lm": "seeded synthetic token sequences that follow bigram, skip-trigram and "
                    "induction rules",
    "text": "the King James Bible, byte-level BPE tokens",
}
NE_NOTE = ("NE (normalized error) = sum|predicted - actual| / sum|actual| over the nodes, in "
           "percent: 0% is exact, 100% as far off as predicting no effect at all. Pearson is "
           "the correlation of predicted and actual effects over the same nodes.")
SPLIT_NOTE = ("The frozen linearization's error, node by node: a - p_frozen = "
              "(a - a_n) + (a_n - a_b) + (a_b - p_frozen), with a the real ablation, a_n the "
              "same with the norms' statistics held, a_b with the norms and the attention "
              "patterns held: norm drift (what recomputing the norms changes), attention "
              "change (what recomputing the patterns changes while the norms are held) and "
              "gating (the bilinear MLPs' own second-order term, everything else held). "
              "Each part is sum|part| / sum|a|; the parts cancel in part, so they can add up "
              "to more than frozen's NE.")


def reachable_nodes(s: dict[str, Any]) -> int | None:
    """The nodes (layer, position, channel) per model whose ablation can reach the target at
    the last position `p = verify_len - 1`: every layer's nodes at `t <= p`, the last
    layer's only at `p` (unless the target reads every position); None if unknown."""
    m = s.get("model") or {}
    try:
        n, T, L, H = (int(v) for v in (s["n_verify"], s["verify_len"], m["n_layers"],
                                       m["d_hidden"]))
    except (KeyError, TypeError, ValueError):
        return None
    per_sequence = L * T if s.get("target") == "mean-logprob" else (L - 1) * T + 1
    return n * per_sequence * H


def target_words(spec: str) -> str:
    """`next` -> "`next` (the log-probability of the true next token ...)"."""
    words = TARGET_WORDS.get(spec)
    return f"`{spec}`" + (f" ({words})" if words else "")


def _model_line(s: dict[str, Any]) -> str:
    m, t = s.get("model") or {}, s.get("train") or {}
    data = s.get("dataset")
    words = DATASET_WORDS.get(data)
    return (f"Bilinear transformers (causal softmax attention with rotary positions, MLPs "
            f"z = (L u) * (R u); docs/spec.md §9) with no norm, RMSNorm or LayerNorm, placed "
            f"before (pre) or after (post) each block, trained at one equal budget on "
            f"`{data}`" + (f" ({words})" if words else "") +
            f": d_model {m.get('d_model')}, d_hidden {m.get('d_hidden')}, "
            f"{m.get('n_layers')} layers, {m.get('n_heads')} heads; {t.get('steps')} steps of "
            f"{t.get('batch_size')} sequences of {s.get('seq_len')} tokens, lr {t.get('lr')}; "
            f"{s.get('seeds')} seed(s) per configuration. The loss is the mean next-token "
            f"cross-entropy (nats) on held-out sequences.")


def _verify_line(s: dict[str, Any]) -> str:
    nodes = reachable_nodes(s)
    count = f"{nodes:,} per model" if nodes is not None else "every one"
    also = s.get("also_targets") or []
    return (f"Each model is verified on {s.get('n_verify')} held-out sequences of "
            f"{s.get('verify_len')} tokens. Every MLP node (layer, position, channel) that "
            f"can reach the target ({count}) is really ablated: set to 0 with every norm and "
            f"attention pattern recomputed, and again with the norms, the patterns or both "
            f"held. An attribution predicts each of those effects from one forward and one "
            f"backward pass through a linearization of the network around the clean run; "
            f"the modes differ in what the linearization holds fixed. "
            f"The target is {target_words(s.get('target', 'next'))}"
            + "".join(f"; the `{a}: ...` columns: {target_words(a)}, every node ablated "
                      f"again" for a in also) + ".")


def lm_intro(cmp: dict[str, Any]) -> list[str]:
    """The paragraphs before the table: the models, the verification, the NE."""
    s = cmp.get("settings") or {}
    lines = [_model_line(s), _verify_line(s), NE_NOTE]
    if s.get("complete") is False:
        lines.append("INCOMPLETE: the run was cut short; the table holds the models that "
                     "finished.")
    return lines


def mode_lines(table: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """`(mode, what it holds)` for every mode the table measured."""
    return [(m, MODE_WORDS.get(m, "")) for m in lm_modes_in(table)]


def lm_sweep_settings(sweep: dict[str, Any]) -> str:
    """One sentence of what a sweep varied, over which values, for which configurations."""
    s = sweep.get("settings") or {}
    values = ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                       for v in s.get("values") or [])
    what = sweep.get("label") or s.get("label") or sweep.get("name")
    line = f"Varied: {what}"
    if s.get("param") or sweep.get("param"):
        line += f" (`{s.get('param') or sweep.get('param')}`)"
    if values:
        line += f" over {values}"
    variants = [f"{n}/{p}" for n, p in s.get("variants") or []]
    if variants:
        line += f", for {', '.join(variants)}"
    line += f"; dataset `{s.get('dataset', sweep.get('dataset'))}`, everything else as in the "
    line += "comparison."
    if s.get("complete") is False:
        line += " INCOMPLETE: the run was cut short."
    return line


def lm_sweep_note(sweep: dict[str, Any]) -> str:
    """What the sweep shows, computed from its table: every mode's NE at the first and the
    last point, per configuration."""
    table = sweep.get("table") or []
    modes = lm_modes_in(table)
    parts = []
    for v in sorted({(r.get("norm"), r.get("position")) for r in table}):
        rows = sorted((r for r in table if (r.get("norm"), r.get("position")) == v),
                      key=lambda r: float(r.get("x", 0)))
        if len(rows) < 2:
            continue
        first, last = rows[0], rows[-1]
        parts.append(f"{v[0]}/{v[1]}, {first.get('x')} -> {last.get('x')}: " + ", ".join(
            f"{m} {pct(first.get(f'{m}.ne'))} -> {pct(last.get(f'{m}.ne'))}" for m in modes))
    return ("NE from the first point to the last: " + "; ".join(parts) + ".") if parts else ""

"""The report's sentences: how an experiment was run (`settings_line`) and what a sweep
shows (`sweep_note`), computed from its table; the Markdown and the HTML page share them."""

from __future__ import annotations

import math
from typing import Any

from bilens.core.units import pct

CLAIMS_NOTE = ("Every verdict is computed by bilens.experiments.claims from the numbers above, "
               "by the rule printed after it (claims 1-10 on the target of the comparison "
               "and sweeps, claim 11 on the weight-based decomposition).")
TARGET_WORDS = {"predicted": "the predicted class's logit",
                "margin": "the top-1 minus top-2 logit of the clean run",
                "label": "the true class's logit", "logprob": "the true label's log-probability"}


def target_words(spec: str) -> str:
    """`predicted` -> "`predicted` (the predicted class's logit)"."""
    words = TARGET_WORDS.get(spec)
    return f"`{spec}`" + (f" ({words})" if words else "")


def settings_line(s: dict[str, Any]) -> str:
    """One sentence of how an experiment was run (its `settings`): data, model, training,
    seeds, verification (the target of every number, and of the extra targets' columns),
    and what a sweep varied (for which norm x position)."""
    m, t = s.get("model", {}), s.get("train", {})
    line = (f"Dataset `{s.get('dataset')}`; d_model {m.get('d_model')}, d_hidden "
            f"{m.get('d_hidden')}, {m.get('n_layers')} layers; {t.get('epochs')} epochs, "
            f"batch {t.get('batch_size')}, lr {t.get('lr')}; seeds {s.get('seeds')}; verified "
            f"on {s.get('n_verify')} test inputs x every channel, zero ablation; target "
            f"{target_words(s.get('target', 'predicted'))}")
    also = s.get("also_targets") or []
    line += "".join(f"; the `{a}: ...` columns: target {target_words(a)}" for a in also) + "."
    if s.get("param"):
        values = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in s["values"])
        what = s.get("label") or s["param"]
        line += f" Varied: {what} (`{s['param']}`) over {values}"
        variants = [f"{n}/{p}" for n, p in s.get("variants") or []]
        if len(variants) > 1:
            line += f", for each norm x position ({', '.join(variants)})"
        elif variants:
            line += f", on {variants[0]}"
        line += "; everything else as above."
    if s.get("complete") is False:
        line += " INCOMPLETE: the run was cut short; the table holds the models that finished."
    return line


def sweep_note(sweep: dict[str, Any]) -> str:
    """One sentence of what a sweep shows, computed from its table (RMSNorm post-norm, or
    every variant for the position sweep)."""
    rows = sorted((r for r in sweep["table"] if (r["norm"], r["position"]) == ("rms", "post")),
                  key=lambda r: float(r["x"]))
    name = sweep.get("name")
    if name == "position":
        parts = []
        for v in sorted({(r["norm"], r["position"]) for r in sweep["table"]}):
            vr = sorted((r for r in sweep["table"] if (r["norm"], r["position"]) == v),
                        key=lambda r: float(r["x"]))
            parts.append(f"{v[0]}/{v[1]} {pct(vr[0]['frozen.ne'])} -> {pct(vr[-1]['frozen.ne'])}")
        return f"Frozen NE from the fewest to the most layers: {'; '.join(parts)}."
    if len(rows) < 2:
        return ""
    first, last = rows[0], rows[-1]
    span = (f"frozen NE {pct(first['frozen.ne'])} -> {pct(last['frozen.ne'])}, live NE "
            f"{pct(first['live.ne'])} -> {pct(last['live.ne'])}")
    if name == "sparsity":
        near = min(rows, key=lambda r: abs(r["active_fraction"] - 0.10))
        return (f"~10% active lies at L1 = {near['x']:g} (measured {pct(near['active_fraction'])}"
                f"; frozen NE there {pct(near['frozen.ne'])}, live NE {pct(near['live.ne'])}). "
                f"From L1 {first['x']:g} to {last['x']:g}: {span}.")
    if name == "d_model":
        pts = [(math.log(float(r["x"])), math.log(r["drift.ds_over_s"])) for r in rows
               if r["drift.ds_over_s"] > 0]
        slope = math.nan
        if len(pts) >= 2:
            mx, my = (sum(p[i] for p in pts) / len(pts) for i in (0, 1))
            den = sum((p[0] - mx) ** 2 for p in pts)
            slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else math.nan
        return (f"|ds/s| scales as d_model^{slope:.2f} (the seed: d_model^-0.5); from "
                f"d_model {first['x']} to {last['x']}: {span}.")
    if name == "depth":
        layers = last.get("frozen.ne_per_layer", [])
        ratio = layers[0] / layers[-1] if len(layers) > 1 and layers[-1] else math.nan
        return (f"From {first['x']} to {last['x']} layers: {span}; in the {last['x']}-layer "
                f"model the first layer's channels have {ratio:.1f}x the frozen error of the "
                f"last layer's (more norms downstream).")
    return f"From {first['x']} to {last['x']}: {span}."

"""The report: the comparison table, the sweeps, the claims and a recommendation, written as
one self-contained HTML page (plots embedded), Markdown (plots beside it) and JSON (every
number), and printed as plain-text tables for the terminal.

The input is one JSON-ready dict, `results`:

    {"title": str, "commands": [str], "compare": CompareResult.to_dict(),
     "sweeps": {name: SweepResult.to_dict()}, "timing": {...}}

`build` adds `claims` (see `bilens.claims`) and `recommendation` to it; `write` writes
`report.html`, `report.md`, `report.json` and the PNGs into a directory, atomically.

Example:
    >>> results = build({"title": "digits", "compare": cmp.to_dict()})   # doctest: +SKIP
    >>> write(results, "runs/demo")                                       # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bilens.experiments.claims import evaluate_claims, pct

ALL_MODES = ("frozen", "live", "renorm")
ACC_TOLERANCE = 0.01   # configurations within 1 pp (or 2 sd) of the best count as accurate


# ------------------------------------------------------------------------- tables


def _pm(mean: float, sd: float | None, scale: float = 100, digits: int = 2) -> str:
    """`mean ± sd` (scaled); the `± sd` is left out when `sd` is None or NaN (one seed)."""
    if not math.isfinite(mean):
        return "n/a"
    if sd is None or not math.isfinite(sd):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def _fixed(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def modes_in(table: list[dict[str, Any]]) -> list[str]:
    """The attribution modes the table measured (frozen and live always, renorm if run)."""
    return [m for m in ALL_MODES if any(isinstance(r.get(f"{m}.ne"), float) and
                                        math.isfinite(r[f"{m}.ne"]) for r in table)] \
        or ["frozen", "live"]


def compare_rows(table: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (strings)."""
    modes = modes_in(table)
    header = ["norm", "position", "seeds", "test acc %", *(f"NE {m}" for m in modes),
              *(f"Pearson {m}" for m in modes), *(f"top-10 {m}" for m in modes),
              "drift share", "gating share"]
    rows = []
    for r in table:
        share = r.get("drift.drift_share", math.nan)
        rows.append([r["norm"], r["position"], str(r.get("n_seeds", 1)),
                     _pm(r["test_accuracy"], r.get("test_accuracy_std")
                         if r.get("n_seeds", 1) > 1 else None),
                     *(pct(r[f"{m}.ne"]) for m in modes),
                     *(_fixed(r[f"{m}.pearson"]) for m in modes),
                     *(pct(r[f"{m}.top10"], 0) for m in modes),
                     pct(share, 0), pct(1 - share, 0) if math.isfinite(share) else "n/a"])
    return header, rows


def sweep_rows(sweep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a sweep's table."""
    modes = modes_in(sweep["table"])
    header = ["norm/pos", sweep.get("label", "x"), "test acc %", "active",
              *(f"NE {m}" for m in modes), "drift NE", "gating NE", "|ds/s|",
              *(f"top-10 {m}" for m in modes)]
    if sweep.get("name") == "depth":
        header.append("NE frozen per layer")
    rows = []
    for r in sweep["table"]:
        row = [f"{r['norm']}/{r['position']}", f"{r['x']:g}" if isinstance(r["x"], float)
               else str(r["x"]), _pm(r["test_accuracy"], None), pct(r["active_fraction"]),
               *(pct(r[f"{m}.ne"]) for m in modes), pct(r["drift.ne_drift"]),
               pct(r["drift.ne_gating"]), pct(r["drift.ds_over_s"], 2),
               *(pct(r[f"{m}.top10"], 0) for m in modes)]
        if sweep.get("name") == "depth":
            row.append(" ".join(pct(v, 0) for v in r.get("frozen.ne_per_layer", [])))
        rows.append(row)
    return header, rows


def claims_rows(claims: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["#", "claim", "the seed says", "measured", "verdict"]
    return header, [[str(i + 1), c["claim"], c["seed"], c["measured"], c["verdict"].upper()]
                    for i, c in enumerate(claims)]


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


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]],
               wrap: dict[int, int] | None = None) -> str:
    """A plain-text table; columns listed in `wrap` ({index: width}) are word-wrapped."""
    import textwrap

    wrap = wrap or {}
    cells = [[textwrap.wrap(str(c), wrap[i]) or [""] if i in wrap else [str(c)]
              for i, c in enumerate(row)] for row in [list(header), *rows]]
    widths = [max(len(line) for row in cells for line in row[i]) for i in range(len(header))]
    out = []
    for n, row in enumerate(cells):
        for k in range(max(len(c) for c in row)):
            out.append("  ".join((c[k] if k < len(c) else "").ljust(w)
                                 for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def compare_text(table: list[dict[str, Any]]) -> str:
    return text_table(*compare_rows(table))


def sweep_text(sweep: dict[str, Any]) -> str:
    return text_table(*sweep_rows(sweep))


def claims_text(claims: list[dict[str, Any]]) -> str:
    return text_table(*claims_rows(claims), wrap={1: 28, 2: 22, 3: 58})


# ------------------------------------------------------------------ recommendation


TIE_PREFERENCE = ("live", "renorm", "frozen")   # exact gradient first: it assumes nothing
TIE_TOLERANCE = 1e-3                             # NEs this close (relative) count as a tie


def _best_mode(row: dict[str, Any]) -> str:
    """The mode with the lowest NE on this row; on a tie (without a norm all three coincide)
    the first of `TIE_PREFERENCE`, so a tie never recommends the frozen linearization."""
    def ne(m: str) -> float:
        v = row.get(f"{m}.ne", math.nan)
        return v if isinstance(v, float) and math.isfinite(v) else math.inf
    best = min(ne(m) for m in ALL_MODES)
    if math.isinf(best):
        return ALL_MODES[0]
    return next(m for m in TIE_PREFERENCE if ne(m) <= best * (1 + TIE_TOLERANCE))


def recommend(cmp: dict[str, Any]) -> dict[str, Any]:
    """Which norm, position and attribution mode to use, and the error to expect.

    Rule: among the configurations whose mean test accuracy is within `ACC_TOLERANCE`
    (or two seed standard deviations, if larger) of the best, pick the one whose better
    attribution mode has the lowest normalized error; that mode is the recommendation.
    """
    table = [r for r in cmp["table"] if math.isfinite(r["test_accuracy"])]
    if not table:
        return {"text": ["No comparison was run: nothing to recommend."]}
    best_acc = max(r["test_accuracy"] for r in table)
    tol = max(ACC_TOLERANCE, 2 * max(r.get("test_accuracy_std", 0.0) or 0.0 for r in table))
    accurate = [r for r in table if r["test_accuracy"] >= best_acc - tol]
    choice = min(accurate, key=lambda r: r[f"{_best_mode(r)}.ne"])
    mode = _best_mode(choice)
    others = ", ".join(f"mode={m} gives NE {pct(choice[f'{m}.ne'])}"
                       for m in modes_in(table) if m != mode)
    faithful = min(table, key=lambda r: r[f"{_best_mode(r)}.ne"])
    live_wins = sum(r["live.ne"] < r["frozen.ne"] * (1 - 1e-6) for r in table)
    ties = sum(abs(r["live.ne"] - r["frozen.ne"]) <= 1e-6 * abs(r["frozen.ne"]) for r in table)
    name = f"{choice['norm']}/{choice['position']}"
    text = [
        f"Use norm={choice['norm']}, position={choice['position']}: test accuracy "
        f"{pct(choice['test_accuracy'], 2)} (best of all: {pct(best_acc, 2)}; configurations "
        f"within {100 * tol:.1f} pp count as equally accurate).",
        f"Attribute with mode={mode}: expected normalized error {pct(choice[f'{mode}.ne'])}, "
        f"Pearson {_fixed(choice[f'{mode}.pearson'])}, top-10 recall "
        f"{pct(choice[f'{mode}.top10'], 0)} against the real ablations; {others} on the "
        f"same model.",
        f"The live mode beats the frozen (seed) mode in {live_wins} of {len(table)} "
        f"configurations" + (f"; they tie in {ties} (without a norm the two modes coincide)."
                             if ties else "."),
    ]
    if "renorm" in modes_in(table):
        wins = sum(r["renorm.ne"] < r["live.ne"] * (1 - 1e-6) for r in table)
        text.append(f"The renorm mode (live, with the first norm an ablation reaches made "
                    f"exact) beats the live mode in {wins} of {len(table)}.")
    normed = [r for r in table if r["norm"] != "none"]
    if choice["norm"] == "none" and normed:
        # a user who needs a norm (depth, stability) gets the same rule among the norms
        best_n = max(r["test_accuracy"] for r in normed)
        alt = min((r for r in normed if r["test_accuracy"] >= best_n - tol),
                  key=lambda r: r[f"{_best_mode(r)}.ne"])
        am = _best_mode(alt)
        text.append(f"If the network needs a norm: norm={alt['norm']}, position="
                    f"{alt['position']} with mode={am} (NE {pct(alt[f'{am}.ne'])}, Pearson "
                    f"{_fixed(alt[f'{am}.pearson'])}, top-10 recall {pct(alt[f'{am}.top10'], 0)}; "
                    f"accuracy {pct(alt['test_accuracy'], 2)}); its frozen mode gives NE "
                    f"{pct(alt['frozen.ne'])}.")
    if faithful is not choice:
        fm = _best_mode(faithful)
        gap = 100 * (best_acc - faithful["test_accuracy"])
        text.append(f"The most faithful configuration is {faithful['norm']}/"
                    f"{faithful['position']} (mode={fm}, NE {pct(faithful[f'{fm}.ne'])}), at "
                    f"{gap:.2f} pp below the best accuracy: prefer it when faithfulness "
                    f"matters more than that.")
    return {"norm": choice["norm"], "position": choice["position"], "mode": mode,
            "config": name, "expected_ne": choice[f"{mode}.ne"],
            "expected_pearson": choice[f"{mode}.pearson"],
            "expected_top10": choice[f"{mode}.top10"], "test_accuracy": choice["test_accuracy"],
            "accuracy_tolerance": tol, "live_wins": live_wins, "text": text}


# ------------------------------------------------------------------ build and write


def build(results: dict[str, Any]) -> dict[str, Any]:
    """Add `claims` and `recommendation` to `results` (returns a new dict)."""
    out = dict(results)
    out["claims"] = evaluate_claims(results)
    out["recommendation"] = (recommend(results["compare"]) if results.get("compare")
                             else {"text": ["No comparison was run: nothing to recommend."]})
    return out


def markdown(results: dict[str, Any], images: dict[str, str]) -> str:
    """The report as Markdown; `images` maps a section key to its PNG file name."""
    lines = [f"# {results.get('title', 'bilens report')}", ""]
    if results.get("commands"):
        lines += ["```", *results["commands"], "```", ""]
    cmp = results.get("compare")
    if cmp:
        s = cmp["settings"]
        lines += ["## Comparison", "", _settings_line(s), "",
                  markdown_table(*compare_rows(cmp["table"])), ""]
        if "compare" in images:
            lines += [f"![comparison]({images['compare']})", ""]
    lines += ["## The seed's claims", "", markdown_table(*claims_rows(results["claims"])), ""]
    for i, c in enumerate(results["claims"]):
        if c["why"] or c["verdict"] != "holds":
            lines += [f"**{i + 1}. {c['claim']}: {c['verdict']}.** {c['why']} "
                      f"_Rule: {c['rule']}._", ""]
    lines += ["## Recommendation", "", *[f"- {t}" for t in results["recommendation"]["text"]],
              ""]
    for name, sweep in (results.get("sweeps") or {}).items():
        lines += [f"## Sweep: {name}", "", _settings_line(sweep["settings"]), "",
                  markdown_table(*sweep_rows(sweep)), "", sweep_note(sweep), ""]
        if f"sweep-{name}" in images:
            lines += [f"![sweep {name}]({images[f'sweep-{name}']})", ""]
    if results.get("timing"):
        lines += ["## Timing", "", ", ".join(f"{k}: {v:.1f} s" for k, v in
                                              results["timing"].items()), ""]
    return "\n".join(lines)


def _settings_line(s: dict[str, Any]) -> str:
    m, t = s.get("model", {}), s.get("train", {})
    line = (f"Dataset `{s.get('dataset')}`; d_model {m.get('d_model')}, d_hidden "
            f"{m.get('d_hidden')}, {m.get('n_layers')} layers; {t.get('epochs')} epochs, "
            f"batch {t.get('batch_size')}, lr {t.get('lr')}; seeds {s.get('seeds')}; verified "
            f"on {s.get('n_verify')} test inputs x every channel, target "
            f"`{s.get('target', 'predicted')}`, zero ablation.")
    if s.get("param"):
        values = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in s["values"])
        line += f" Varied: `{s['param']}` over {values}; everything else as above."
    if s.get("complete") is False:
        line += " INCOMPLETE: the run was cut short; the table holds the models that finished."
    return line


def check_outdir(outdir: str | os.PathLike) -> None:
    """Raise unless `outdir/report` is free for `write` (absent, empty or a previous report):
    `write` replaces that directory whole."""
    from bilens.core.errors import BilensError

    final = Path(outdir) / "report"
    if final.exists() and (not final.is_dir() or (any(final.iterdir())
                                                  and not (final / "report.json").is_file())):
        raise BilensError(f"out: {str(final)!r} exists and is not a bilens report; choose "
                          f"another --out (the report directory is replaced whole)")


def write(results: dict[str, Any], outdir: str | os.PathLike) -> dict[str, Path]:
    """Write `report.html`, `report.md`, `report.json` and the PNGs into `outdir`.

    The files are written into a temporary directory beside `outdir` and moved in together,
    so an interrupted run leaves the previous report (or none), never half of one.

    Returns:
        `{"html": path, "markdown": path, "json": path, <image key>: path, ...}`.
    """
    from bilens.core.io import atomic_dir, write_json
    from bilens.report.html import html, render_plots

    out = Path(outdir)
    check_outdir(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = render_plots(results)                                 # {key: png bytes}
    names = {key: f"{key}.png" for key in pngs}
    with atomic_dir(out / "report") as tmp:
        for key, data in pngs.items():
            (tmp / names[key]).write_bytes(data)
        (tmp / "report.md").write_text(markdown(results, names))
        (tmp / "report.html").write_text(html(results, pngs))
        write_json(tmp / "report.json", results)
    final = out / "report"
    paths = {"html": final / "report.html", "markdown": final / "report.md",
             "json": final / "report.json"}
    paths.update({key: final / name for key, name in names.items()})
    return paths


def command_line() -> str:
    """The command that is running, as a user would type it."""
    import shlex
    import sys

    args = sys.argv[1:]
    return "bilens " + " ".join(shlex.quote(a) for a in args)


def collect(*directories: str | os.PathLike) -> dict[str, Any]:
    """Gather `compare.json` and `sweep-*.json` written by `bilens compare` / `bilens sweep`
    into one `results` dict for `build` (the last `compare.json` found wins)."""
    import json

    results: dict[str, Any] = {"sweeps": {}}
    for d in map(Path, directories):
        if (d / "compare.json").is_file():
            results["compare"] = json.loads((d / "compare.json").read_text())
        for f in sorted(d.glob("sweep-*.json")):
            data = json.loads(f.read_text())
            results["sweeps"][data["name"]] = data
    return results

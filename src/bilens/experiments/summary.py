"""One experiment's results as one JSON-ready dict, with the claims and the recommendation.

    {"title": str, "commands": [str], "compare": CompareResult.to_dict(),
     "sweeps": {name: SweepResult.to_dict()}, "timing": {...},
     "decomposition": decompose_models.decompose_compared(...),    # optional, MLP models
     "lm": {"decomposition": decompose_models.decompose_compared(...), ...}}  # transformers

`build` adds `claims` (see `bilens.experiments.claims`) and `recommendation` (see
`bilens.experiments.recommend`); `collect` gathers the JSON files `bilens compare` and
`bilens sweep` wrote. `bilens.report.write` renders the dict.

Example:
    >>> from bilens import report
    >>> results = build({"title": "digits", "compare": cmp.to_dict()})   # doctest: +SKIP
    >>> report.write(results, "runs/demo")                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bilens.experiments.claims import evaluate_claims
from bilens.experiments.recommend import NOTHING, recommend


def build(results: dict[str, Any]) -> dict[str, Any]:
    """Add `claims` and `recommendation` to `results` (returns a new dict)."""
    out = dict(results)
    out["claims"] = evaluate_claims(results)
    out["recommendation"] = (recommend(results["compare"]) if results.get("compare")
                             else {"text": [NOTHING]})
    return out


def collect(*directories: str | os.PathLike) -> dict[str, Any]:
    """Gather `compare.json`, `sweep-*.json`, `decomposition.json` and
    `decomposition-lm.json` written by
    `bilens compare` / `bilens sweep` / `bilens demo` into one `results` dict for `build`
    (the last of each found wins)."""
    results: dict[str, Any] = {"sweeps": {}}
    for d in map(Path, directories):
        if (d / "compare.json").is_file():
            results["compare"] = json.loads((d / "compare.json").read_text())
        if (d / "decomposition.json").is_file():
            results["decomposition"] = json.loads((d / "decomposition.json").read_text())
        if (d / "decomposition-lm.json").is_file():
            results.setdefault("lm", {})["decomposition"] = json.loads(
                (d / "decomposition-lm.json").read_text())
        for f in sorted(d.glob("sweep-*.json")):
            data = json.loads(f.read_text())
            results["sweeps"][data["name"]] = data
    return results

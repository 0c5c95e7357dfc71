"""`bilens demo`: the main job, fast, on the embedded `digits` dataset.

It runs a small version of everything bilens exists for: the comparison of none/rms/layer
x post/pre (three seeds, each model verified for the predicted logit and the margin), the
four sweeps of the seed's error analysis on their small grids, the weight-based
decomposition of every compared model (`decompose_models`, written to
`OUT/decomposition.json`), the claims table and the recommendation; then the same for
language models on `synthetic-lm` (`lm_compare`: tiny bilinear transformers, none/rms/layer
x pre/post, one seed, every node of 16 held-out sequences really ablated in the real
network and with each statistic held, every mode checked, written to
`OUT/compare-lm.json`), with the claims re-judged on them and the combined recommendation;
all in under 3 minutes on 2 CPU cores. `bilens demo` then writes the report
(`bilens.report.write`). Models and verifications are cached under `OUT/models`, so a
second run only re-decomposes (seconds) and rebuilds the report.

Example:
    >>> from bilens import report
    >>> results = run_demo("runs/demo")                     # doctest: +SKIP
    >>> report.write(results, "runs/demo")["html"]          # doctest: +SKIP
    PosixPath('runs/demo/report/report.html')
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATASET = "digits"
SEEDS = 3
EPOCHS = 8
N_VERIFY = 64
LM_DATASET = "synthetic-lm"
LM_SEEDS = 1


def run_demo(out: str | os.PathLike = "runs/demo", *, device: str = "cpu", force: bool = False,
             seeds: int = SEEDS, epochs: int = EPOCHS, n_verify: int = N_VERIFY,
             cache_dir: str | os.PathLike | None = None, command: str = "bilens demo",
             lm: bool = True, lm_steps: int | None = None, lm_n_verify: int | None = None,
             log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Compare, sweep (small grids), evaluate the claims and recommend.

    Args:
        out: output directory (`compare.json`, `sweep-*.json`; the CLI writes the report
            to `out/report/`).
        device: where to train and verify (the demo is sized for the CPU).
        force: retrain everything instead of reusing cached models.
        seeds: seeds per configuration in the comparison.
        epochs: training epochs of every model (one equal budget).
        n_verify: test inputs whose every channel is ablated, per model.
        cache_dir: model cache (default `out/models`).
        command: the command line recorded in the report.
        lm: also run the language-model section (`synthetic-lm`).
        lm_steps: optimizer steps of every transformer (default: the preset's).
        lm_n_verify: held-out sequences verified per transformer (default: the preset's).
        log: progress lines (None: silent).

    Returns:
        the report's dict (title, commands, compare, sweeps, decomposition, claims,
        recommendation, timing, and `lm` with the transformer comparison, its claims and
        recommendation, and `combined`; see `bilens.experiments.summary`).
    """
    from bilens.core.io import write_json
    from bilens.experiments.compare import Runner, compare
    from bilens.experiments.decompose_models import decompose_compared
    from bilens.experiments.summary import build
    from bilens.experiments.sweeps import SWEEPS, sweep

    start = time.perf_counter()
    runner = Runner(cache_dir or Path(out) / "models", force=force, device=device,
                    n_verify=n_verify, log=log)
    timing: dict[str, float] = {}
    cmp = compare(DATASET, seeds=seeds, out=out, epochs=epochs, runner=runner)
    timing["compare"] = time.perf_counter() - start
    sweeps = {}
    for name in SWEEPS:
        t = time.perf_counter()
        sweeps[name] = sweep(name, DATASET, out=out, fast=True, epochs=epochs,
                             runner=runner).to_dict()
        timing[f"sweep {name}"] = time.perf_counter() - t
    t = time.perf_counter()
    decomposition = decompose_compared(cmp.to_dict(), runner.dataset)
    write_json(Path(out) / "decomposition.json", decomposition)
    timing["decomposition"] = time.perf_counter() - t
    parts = {"lm": _lm_section(out, runner, timing, lm_steps, lm_n_verify)} if lm else {}
    results = build({
        "title": f"bilens demo: the seed's claims measured on {DATASET}"
                 + (f" and {LM_DATASET}" if lm else ""),
        "commands": [command], "compare": cmp.to_dict(), "sweeps": sweeps,
        "decomposition": decomposition, **parts, "timing": timing})
    timing["total"] = time.perf_counter() - start
    return results


def _lm_section(out: str | os.PathLike, runner: Any, timing: dict[str, float],
                steps: int | None, n_verify: int | None) -> dict[str, Any]:
    """The language-model part: `compare_lm` on `synthetic-lm` with the MLP runner's cache
    and device, and the decomposition of its models (`OUT/decomposition-lm.json`)."""
    from bilens.core.io import write_json
    from bilens.experiments.decompose_models import decompose_compared
    from bilens.experiments.lm_compare import LMRunner, compare_lm

    t = time.perf_counter()
    lm_runner = LMRunner(runner.cache_dir, force=runner.force, device=runner.device,
                         n_verify=n_verify, log=runner.log)
    cmp = compare_lm(LM_DATASET, seeds=LM_SEEDS, out=out, steps=steps, runner=lm_runner)
    timing["compare (language models)"] = time.perf_counter() - t
    t = time.perf_counter()
    decomposition = decompose_compared(cmp.to_dict(), lm_runner.dataset)
    write_json(Path(out) / "decomposition-lm.json", decomposition)
    timing["decomposition (language models)"] = time.perf_counter() - t
    return {"compare": cmp.to_dict(), "decomposition": decomposition}

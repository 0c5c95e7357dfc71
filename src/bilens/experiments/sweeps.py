"""`bilens sweep`: the seed's error analysis, one axis at a time.

| sweep      | what varies                              | the claim it tests              |
| ---------- | ---------------------------------------- | ------------------------------- |
| `d_model`  | residual width, 64 .. 1024               | error shrinks with d_model      |
| `sparsity` | the L1 penalty on `z` (measured: active) | shrinks with sparsity; ~0.6%    |
| `depth`    | layers, 1 .. 8, error layer by layer     | compounding stays small         |
| `position` | pre vs post, RMS and LayerNorm, by depth | pre- and post-norm differ       |

Every point trains (or reuses) a model at the dataset's preset budget, changes one thing,
verifies it with every mode and records the same summary as `compare`. `fast=True` uses a
smaller grid (what `bilens demo` runs).

Example:
    >>> result = sweep("depth", "digits", out="runs/sweep-depth")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bilens.core.errors import BilensError
from bilens.core.io import write_json
from bilens.experiments.compare import DEFAULT_N_VERIFY, Runner, Spec, preset_spec
from bilens.experiments.lm_compare import (
    LM_EXTRA_TARGETS,
    LM_PRESETS,
    LMRunner,
    aggregate_lm,
    lm_preset_spec,
)
from bilens.experiments.stats import aggregate


@dataclass(frozen=True)
class SweepDef:
    """One sweep: which field varies, over which values, for which norm/position pairs.

    Args:
        name: the sweep's name on the command line.
        param: `"model.<field>"` or `"train.<field>"`.
        values: the full grid.
        fast: the grid `bilens demo` uses.
        label: the x axis's label.
        base: model overrides of the preset for every point.
        variants: (norm, position) pairs swept.
        log_x: plot x on a log axis.
    """

    name: str
    param: str
    values: tuple
    fast: tuple
    label: str
    base: dict[str, Any] = field(default_factory=dict)
    variants: tuple[tuple[str, str], ...] = (("rms", "post"),)
    log_x: bool = True


SWEEPS: dict[str, SweepDef] = {
    "d_model": SweepDef("d_model", "model.d_model", (64, 128, 256, 512, 1024),
                        (32, 64, 128, 256), "d_model"),
    # The seed's estimate is for d_model 256, so the sparsity sweep is run there.
    "sparsity": SweepDef("sparsity", "train.l1", (0.0, 0.3, 1.0, 3.0, 5.0, 10.0, 20.0),
                         (0.0, 1.0, 3.0, 10.0), "L1 penalty on z", base={"d_model": 256},
                         log_x=False),
    "depth": SweepDef("depth", "model.n_layers", (1, 2, 3, 4, 5, 6, 7, 8), (1, 2, 4, 6),
                      "layers", log_x=False),
    "position": SweepDef("position", "model.n_layers", (1, 2, 4, 8), (1, 3), "depth (layers)",
                         variants=(("rms", "post"), ("rms", "pre"),
                                   ("layer", "post"), ("layer", "pre")), log_x=False),
}


# The bilinear transformer's sweeps (`--kind transformer`), on RMSNorm pre-norm: the
# published bilinear LMs' layout. The fast grids (`--fast`) are small enough for the CPU on
# synthetic-lm.
LM_SWEEPS: dict[str, SweepDef] = {
    "d_model": SweepDef("d_model", "model.d_model", (64, 128, 256, 512), (16, 32, 64),
                        "d_model", variants=(("rms", "pre"),)),
    "sparsity": SweepDef("sparsity", "train.l1", (0.0, 0.1, 0.3, 1.0, 3.0), (0.0, 0.3, 3.0),
                         "L1 penalty on z", variants=(("rms", "pre"),), log_x=False),
    "depth": SweepDef("depth", "model.n_layers", (1, 2, 4, 8), (1, 2, 3), "layers",
                      variants=(("rms", "pre"),), log_x=False),
}


def sweeps_for(dataset: str) -> dict[str, SweepDef]:
    """The sweeps of the dataset's model family: `LM_SWEEPS` for token data, else `SWEEPS`."""
    return LM_SWEEPS if dataset in LM_PRESETS else SWEEPS


@dataclass
class SweepResult:
    """Rows (one per model), the table aggregated over seeds per (norm, position, x)."""

    name: str
    dataset: str
    param: str
    label: str
    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    settings: dict[str, Any]
    log_x: bool = True
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset, "param": self.param,
                "label": self.label, "log_x": self.log_x, "settings": self.settings,
                "table": self.table, "rows": self.rows, "wall_time": self.wall_time}


def sweep_specs(definition: SweepDef, base: Spec, values: tuple, seeds: int = 1) -> list[Spec]:
    """One spec per (variant, value, seed)."""
    section, _, name = definition.param.partition(".")
    if isinstance(definition.values[0], float):     # --values 0 is the grid's 0.0: one key
        values = tuple(float(v) for v in values)
    specs = []
    for seed in range(seeds):          # value before variant: a run cut short keeps every
        for value in values:           # variant of the values it reached
            for norm, position in definition.variants:
                change = {name: value}
                specs.append(base.with_(
                    model={"norm": norm, "norm_position": position,
                           **(change if section == "model" else {})},
                    train={"seed": seed, **(change if section == "train" else {})},
                    tags={"sweep": definition.name, "x": value}))
    return specs


def sweep(name: str, dataset: str = "digits", out: str | os.PathLike | None = None, *,
          values: tuple | list | None = None, fast: bool = False, seeds: int = 1,
          epochs: int | None = None, n_verify: int | None = None, device: str = "auto",
          force: bool = False, cache_dir: str | os.PathLike | None = None,
          target: str | None = None, log: Callable[[str], None] | None = print,
          runner: Runner | LMRunner | None = None) -> SweepResult:
    """Run one sweep of `SWEEPS` (MLP datasets) or `LM_SWEEPS` (`synthetic-lm`, `text`).

    Args:
        name: `d_model`, `sparsity`, `depth` or `position` (the transformer: the first three).
        dataset: the dataset (its preset gives the budget of every point); a token dataset
            sweeps the bilinear transformer, `epochs` then counting optimizer steps.
        out: where `sweep-<name>.json` is written; the cache defaults to `out/models`.
        values: the grid (default: the sweep's full grid, or its fast grid with `fast`).
        fast: use the small grid.
        seeds: seeds per point.
        epochs, n_verify, device, force, cache_dir, target, log, runner: as for `compare`
            (`target` None: the family's default, `predicted` or `next`).

    Returns:
        A `SweepResult`; a transformer's rows carry the margin target's numbers too
        (`row["margin"]`, as in `compare_lm`).
    """
    lm, defs = dataset in LM_PRESETS, sweeps_for(dataset)
    if name not in defs:
        raise BilensError(f"sweep: expected one of {sorted(defs)} for {dataset}, got {name!r}")
    definition = defs[name]
    start = time.perf_counter()
    grid = tuple(values) if values else (definition.fast if fast else definition.values)
    base = (lm_preset_spec if lm else preset_spec)(dataset, epochs, **definition.base)
    if runner is None:
        cache = cache_dir or (Path(out) / "models" if out is not None else Path("runs/cache"))
        runner = (LMRunner(cache, force=force, device=device, log=log, n_verify=n_verify,
                           **({"target": target} if target else {})) if lm else
                  Runner(cache, force=force, device=device, log=log,
                         target=target or "predicted",
                         n_verify=n_verify or DEFAULT_N_VERIFY.get(dataset, 64)))
    settings = {"dataset": dataset, "param": definition.param, "label": definition.label,
                "variants": [list(v) for v in definition.variants], "values": list(grid),
                "seeds": seeds, "model": base.model, "train": base.train,
                "n_verify": runner.n_verify, "target": runner.target, "device": runner.device}
    if lm:
        settings.update(kind="transformer", **runner.settings_of(dataset),
                        also_targets=[t for t in LM_EXTRA_TARGETS if t != runner.target])
    specs = sweep_specs(definition, base, grid, seeds)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        row = runner.evaluate(spec, also=LM_EXTRA_TARGETS) if lm else runner.evaluate(spec)
        row["x"] = spec.tags["x"]
        rows.append(row)
        result = SweepResult(name, dataset, definition.param, definition.label, rows,
                             (aggregate_lm if lm else aggregate)(rows, ("norm", "position",
                                                                        "x")),
                             {**settings, "complete": len(rows) == len(specs)},
                             definition.log_x, time.perf_counter() - start)
        if out is not None:            # after every model, so a run cut short keeps its rows
            write_json(Path(out) / f"sweep-{'lm-' if lm else ''}{name}.json", result.to_dict())
    return result

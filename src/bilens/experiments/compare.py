"""`bilens compare`: the seed's comparison table, measured.

For every norm (none, rms, layer) x position (post, pre) and every seed, train a model at
one equal budget (or reuse a cached one), verify it with every attribution mode against the
real ablations, for two targets (docs/spec.md §2): the `target` given (default the
predicted class's logit) and the margin, top-1 minus top-2 logit (`stats.EXTRA_TARGETS`;
the frozen mode's error depends on the target), and aggregate over seeds into the table the
seed sketches:

| norm | position | test accuracy | NE, Pearson, top-10 recall per mode | drift vs gating share |
| NE per mode for the margin target |

Models are cached under `cache_dir/<dataset>-<norm>-<position>-<key>/`, where `key` hashes the
full model config, the training config (the device excepted: it changes floating-point
rounding, not the experiment) and the dataset; verification summaries are cached beside them
keyed by the model's key and the verification settings. `force=True` retrains and re-verifies.

Example:
    >>> result = compare("digits", seeds=1, out="runs/compare")   # doctest: +SKIP
    >>> from bilens import report
    >>> print(report.compare_text(result.table))                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bilens.core.config import NORMS, POSITIONS, ModelConfig
from bilens.core.errors import BilensError
from bilens.core.io import write_json
from bilens.experiments.stats import EXTRA_TARGETS, MODES, aggregate

CACHE_VERSION = 1
TOP_K = 10

# The equal budget per dataset: one architecture and one optimization for every norm.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {"model": {"d_model": 64, "d_hidden": 128, "n_layers": 3},
               "train": {"epochs": 12, "batch_size": 64, "lr": 3e-3}},
    "synthetic": {"model": {"d_model": 32, "d_hidden": 32, "n_layers": 2},
                  "train": {"epochs": 8, "batch_size": 128, "lr": 3e-3}},
    # 10 epochs of 118 steps: sized so that 72 models train and verify on one GPU in minutes
    "mnist": {"model": {"d_model": 256, "d_hidden": 512, "n_layers": 4},
              "train": {"epochs": 10, "batch_size": 512, "lr": 3e-3}},
    "fashion-mnist": {"model": {"d_model": 256, "d_hidden": 512, "n_layers": 4},
                      "train": {"epochs": 10, "batch_size": 512, "lr": 3e-3}},
}
DEFAULT_N_VERIFY = {"digits": 64, "synthetic": 128, "mnist": 128, "fashion-mnist": 128}


@dataclass(frozen=True)
class Spec:
    """One model to train and verify.

    Args:
        dataset: a name from `bilens.core.data.DATASETS`.
        model: `ModelConfig` fields except `d_in` and `n_out` (taken from the dataset).
        train: `TrainConfig` fields.
        tags: what this model stands for in an experiment (e.g. `{"sweep": "depth"}`).
    """

    dataset: str
    model: dict[str, Any]
    train: dict[str, Any]
    tags: dict[str, Any] = field(default_factory=dict)

    def with_(self, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
              tags: dict[str, Any] | None = None) -> Spec:
        """A copy with some model, train or tag fields replaced."""
        return Spec(self.dataset, {**self.model, **(model or {})}, {**self.train, **(train or {})},
                    {**self.tags, **(tags or {})})


def preset_spec(dataset: str, epochs: int | None = None, **model: Any) -> Spec:
    """The equal-budget spec of `PRESETS[dataset]`, with overrides."""
    if dataset not in PRESETS:
        raise BilensError(f"dataset: expected one of {sorted(PRESETS)}, got {dataset!r}")
    preset = PRESETS[dataset]
    train = dict(preset["train"])
    if epochs is not None:
        train["epochs"] = int(epochs)
    return Spec(dataset, {**preset["model"], **model}, train)


def cache_key(dataset: str, model_config: ModelConfig, train_config: Any) -> str:
    """A short hash of everything that defines a trained model (the device excepted)."""
    train = {k: v for k, v in asdict(train_config).items() if k not in ("device",)}
    blob = json.dumps({"v": CACHE_VERSION, "dataset": dataset, "model": model_config.to_dict(),
                       "train": train}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class CachedRunner:
    """What both families' runners share: a trained model cached under
    `cache_dir/<dataset>-<norm>-<position>-<key>/`, and a verification summary cached beside
    it keyed by the verification settings. A subclass gives `configs`, `key`, `train`,
    `train_info`, `verify` and `verify_settings`."""

    cache_dir: Path
    force: bool
    log: Callable[[str], None]

    def model(self, spec: Spec) -> tuple[Any, dict[str, Any]]:
        """Train the spec's model, or load it from the cache; returns `(model, info)`."""
        from bilens.core.checkpoint import load, save

        mc, tc = self.configs(spec)
        key = self.key(spec, mc, tc)
        directory = self.cache_dir / f"{spec.dataset}-{mc.norm}-{mc.norm_position}-{key}"
        trained = self.__dict__.setdefault("_trained", set())   # by this runner: kept under force
        if directory.is_dir() and (not self.force or key in trained):
            try:
                model = load(directory)
                self.log(f"reusing cached model {directory}")
                return model, {"key": key, "model_dir": str(directory), "reused": True,
                               **self.train_info(model.metadata)}
            except BilensError as err:
                self.log(f"cached model {directory} unreadable ({err}); retraining")
        family = " transformer" if getattr(mc, "kind", "mlp") == "transformer" else ""
        self.log(f"training {spec.dataset}{family} {mc.norm}/{mc.norm_position} "
                 f"d_model={mc.d_model} layers={mc.n_layers} l1={tc.l1} seed={tc.seed} "
                 f"-> {directory}")
        result = self.train(spec, mc, tc)
        meta = {**result.metadata, "cache_key": key}
        save(result.model, directory, meta, overwrite=True)     # the cache's own entry
        trained.add(key)
        return result.model.cpu(), {"key": key, "model_dir": str(directory), "reused": False,
                                    **self.train_info(meta)}

    def verified(self, spec: Spec, also: tuple[str, ...] = ()
                 ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """`(model, info, summary)`: the spec's model trained or reused, its summary for
        `self.target`, and under `summary[t]` the same for each other target `t` of `also`."""
        model, info = self.model(spec)
        summary = self._verified(model, spec.dataset, info, self.target)
        for t in also:
            if t != self.target:
                summary[t] = self._verified(model, spec.dataset, info, t)
        return model, info, summary

    def _verified(self, model: Any, dataset: str, info: dict[str, Any],
                  target: str) -> dict[str, Any]:
        """`verify`'s summary for one target, from the cache when the model was reused."""
        vkey = hashlib.sha256(json.dumps(
            {**self.verify_settings(dataset), "target": target, "v": CACHE_VERSION},
            sort_keys=True).encode()).hexdigest()[:8]
        cached = self.cache_dir / "verify" / f"{Path(info['model_dir']).name}-{vkey}.json"
        if cached.is_file() and not self.force and info["reused"]:
            return json.loads(cached.read_text())
        summary = self.verify(model, dataset, target)
        write_json(cached, summary)
        return summary


class Runner(CachedRunner):
    """Trains (or reuses) and verifies models, holding datasets in memory between them.

    Args:
        cache_dir: where trained models and verification summaries are cached.
        force: retrain and re-verify even when a cached result exists.
        device: `"auto"`, `"cpu"`, `"cuda"`, ... for training and verification.
        n_verify: test inputs verified per model (every channel of every layer is ablated).
        target: what the attributions explain (docs/spec.md §2), resolved on each clean run.
        log: where progress lines go (default `print`).
    """

    def __init__(self, cache_dir: str | os.PathLike, *, force: bool = False,
                 device: str = "auto", n_verify: int = 64, target: str = "predicted",
                 log: Callable[[str], None] | None = print):
        self.cache_dir, self.force, self.device = Path(cache_dir), force, device
        self.n_verify, self.target = int(n_verify), target
        self.log = log or (lambda _msg: None)
        self._data: dict[tuple[str, str], Any] = {}
        if self.n_verify < 1:
            raise BilensError(f"n_verify: expected a positive integer, got {n_verify!r}")

    def dataset(self, name: str, split: str) -> Any:
        """A loaded split, loaded once."""
        from bilens.core.data import load_dataset

        if (name, split) not in self._data:
            self._data[name, split] = load_dataset(name, split)
        return self._data[name, split]

    def configs(self, spec: Spec) -> tuple[ModelConfig, Any]:
        """The `ModelConfig` and `TrainConfig` of a spec (validated)."""
        from bilens.training.train import TrainConfig

        test = self.dataset(spec.dataset, "test")
        names = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(spec.train) - names)
        if unknown:
            raise BilensError(f"train options {unknown} unknown; TrainConfig has {sorted(names)}")
        mc = ModelConfig(d_in=test.d_in, n_out=test.n_classes, **spec.model)
        tc = TrainConfig(**{**spec.train, "device": self.device})
        return mc, tc

    def key(self, spec: Spec, mc: ModelConfig, tc: Any) -> str:
        return cache_key(spec.dataset, mc, tc)

    def train(self, spec: Spec, mc: ModelConfig, tc: Any) -> Any:
        from bilens.training.train import train

        data = (self.dataset(spec.dataset, "train"), self.dataset(spec.dataset, "test"))
        return train(mc, tc, data, progress=False)

    def train_info(self, meta: dict[str, Any]) -> dict[str, Any]:
        return _train_info(meta)

    def verify_settings(self, dataset: str) -> dict[str, Any]:
        return {"n": self.n_verify, "modes": MODES}

    def evaluate(self, spec: Spec, also: tuple[str, ...] = ()) -> dict[str, Any]:
        """Train or reuse the spec's model and verify it: one row (see `summarize`), for
        `self.target`, and under `row[t]` the same summary for each target `t` of `also`."""
        model, info, summary = self.verified(spec, also)
        cfg = model.config
        return {"dataset": spec.dataset, "norm": cfg.norm, "position": cfg.norm_position,
                "seed": int(spec.train.get("seed", 0)), "d_model": cfg.d_model,
                "d_hidden": cfg.d_hidden, "n_layers": cfg.n_layers,
                "l1": float(spec.train.get("l1", 0.0)), "tags": dict(spec.tags), **info,
                **summary}

    def verify(self, model: Any, dataset: str, target: str | None = None) -> dict[str, Any]:
        """Verify `model` on the first `n_verify` test inputs of `dataset` for `target`
        (default `self.target`): `summarize`."""
        from bilens.analysis.verify import verify
        from bilens.core.device import resolve_device

        test = self.dataset(dataset, "test")
        x, y = test.x[: self.n_verify], test.y[: self.n_verify]
        device = resolve_device(self.device)
        start = time.perf_counter()
        result = verify(model.to(device), x.to(device), target=target or self.target,
                        modes=MODES, labels=y.to(device), progress=False)
        summary = summarize(result.metrics)
        summary["n_verify"] = int(x.shape[0])
        summary["verify_time"] = time.perf_counter() - start
        model.cpu()
        return summary


def _train_info(meta: dict[str, Any]) -> dict[str, Any]:
    return {"test_accuracy": float(meta.get("test_accuracy", math.nan)),
            "active_fraction": float(meta.get("active_fraction", math.nan)),
            "train_time": float(meta.get("wall_time", math.nan))}


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers bilens's experiments use, read off `VerifyResult.metrics`.

    Returns:
        `{"frozen": {...}, "live": {...}, "drift": {...}}`: per mode the normalized error
        `ne`, `pearson`, `spearman`, `top10` recall, `sign` agreement, `ne_per_layer` and the
        faithfulness curve `circuit` (`[[k, NE of the summed prediction vs the joint
        ablation], ...]`); under `drift` the frozen mode's error split into norm drift and
        gating interference (`ne_drift`, `ne_gating`, `drift_share`, per layer too), the
        measured `|ds/s|` at the first norm after the ablated channel (`ds_over_s` mean,
        `ds_over_s_median`), the seed's own estimate of it (`seed_estimate`), the seed
        formula's Pearson correlation with the measurement (`formula_corr`), and the drift's
        effect on the target relative to the channel's own effect, `|a - a_frozen| / |a|`
        (`effect_ratio`: median over the channels whose `|a|` is in the upper half).
    """
    out: dict[str, Any] = {}
    for mode, m in metrics["modes"].items():
        overall = m["overall"]
        out[mode] = {
            "ne": overall["normalized_error"], "pearson": overall["pearson"],
            "spearman": overall["spearman"], "top10": overall.get(f"recall@{TOP_K}", math.nan),
            "sign": overall["sign_agreement"],
            "ne_per_layer": [pl["normalized_error"] for pl in m["per_layer"]],
            "circuit": [[c["k"], c["normalized_error"]] for c in m.get("circuit", [])],
        }
    dec = metrics["modes"]["frozen"]["decomposition"]
    drift = metrics["drift"]["overall"]
    out["drift"] = {
        "ne_drift": dec["overall"]["drift_ne"], "ne_gating": dec["overall"]["gating_ne"],
        "drift_share": dec["overall"]["drift_share"],
        "ne_drift_per_layer": [pl["drift_ne"] for pl in dec["per_layer"]],
        "ne_gating_per_layer": [pl["gating_ne"] for pl in dec["per_layer"]],
        "ds_over_s": drift["abs_ds_over_s"]["mean"],
        "ds_over_s_median": drift["abs_ds_over_s"]["median"],
        "seed_estimate": drift["seed_estimate"],
        "delta_over_r": drift["delta_over_r"]["median"],
        "formula_corr": drift["formula_pearson"],
        "effect_ratio": drift["effect_ratio_upper_half"]["median"],
    }
    return out


@dataclass
class CompareResult:
    """What `compare` returns: per-model rows, the aggregated table and the settings."""

    dataset: str
    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    settings: dict[str, Any]
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "settings": self.settings, "table": self.table,
                "rows": self.rows, "wall_time": self.wall_time}


def compare_specs(spec: Spec, seeds: int, norms: Iterable[str] = NORMS,
                  positions: Iterable[str] = POSITIONS, first_seed: int = 0) -> list[Spec]:
    """The grid norm x position x seed around `spec` (seeds first_seed, first_seed + 1, ...)."""
    return [spec.with_(model={"norm": n, "norm_position": p}, train={"seed": s})
            for s in range(first_seed, first_seed + seeds) for n in norms for p in positions]


def compare(dataset: str = "digits", seeds: int = 1, out: str | os.PathLike | None = None, *,
            epochs: int | None = None, n_verify: int | None = None, device: str = "auto",
            force: bool = False, cache_dir: str | os.PathLike | None = None,
            spec: Spec | None = None, target: str = "predicted", first_seed: int = 0,
            log: Callable[[str], None] | None = print, runner: Runner | None = None,
            ) -> CompareResult:
    """Train and verify none/rms/layer x post/pre at an equal budget; aggregate over seeds.

    Args:
        dataset: `digits`, `mnist`, `fashion-mnist` or `synthetic`.
        seeds: seeds per configuration (the table gives mean and standard deviation).
        out: where `compare.json` is written (None: nowhere; cache default `out/models`).
        epochs: override the preset's epochs (the budget stays equal across norms).
        n_verify: test inputs verified per model (default per dataset).
        device: where to train and verify.
        force: retrain and re-verify even if cached.
        cache_dir: where models are cached (default `out/models`, else `runs/cache`).
        spec: the base spec (default `preset_spec(dataset, epochs)`).
        target: what the attributions explain (docs/spec.md §2 spec string); every model is also
            verified for each target of `stats.EXTRA_TARGETS` (the margin), under `row[t]`
            and in the table as `<t>.<mode>.ne`.
        first_seed: the first seed (to split the seeds of one table over processes).
        log: progress lines (None: silent).
        runner: reuse a `Runner` (its cache, device, target and datasets) instead.

    Returns:
        A `CompareResult`; `.table` has one row per (norm, position).
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise BilensError(f"seeds: expected a positive integer, got {seeds!r}")
    start = time.perf_counter()
    base = spec or preset_spec(dataset, epochs)
    if runner is None:
        cache = cache_dir or (Path(out) / "models" if out is not None else Path("runs/cache"))
        runner = Runner(cache, force=force, device=device, log=log, target=target,
                        n_verify=DEFAULT_N_VERIFY.get(dataset, 64) if n_verify is None
                        else n_verify)
    settings = {"dataset": dataset, "seeds": seeds, "first_seed": first_seed, "model": base.model,
                "train": base.train, "n_verify": runner.n_verify, "target": runner.target,
                "also_targets": [t for t in EXTRA_TARGETS if t != runner.target],
                "device": runner.device}
    specs = compare_specs(base, seeds, first_seed=first_seed)
    rows: list[dict[str, Any]] = []
    for spec in specs:                 # seeds outermost: a partial file holds whole seeds
        rows.append(runner.evaluate(spec, also=EXTRA_TARGETS))
        result = CompareResult(dataset, rows, aggregate(rows, ("norm", "position")),
                               {**settings, "complete": len(rows) == len(specs)},
                               time.perf_counter() - start)
        if out is not None:            # after every model, so a run cut short keeps its rows
            write_json(Path(out) / "compare.json", result.to_dict())
    return result

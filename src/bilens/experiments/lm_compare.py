"""`bilens compare --kind transformer`: the seed's comparison for the bilinear transformer.

For every norm (none, rms, layer) x position (pre, post) and every seed, train a bilinear
transformer (docs/spec.md §9) at one equal budget (or reuse a cached one), verify it with
every sequence-model mode (`frozen`, `frozen-norm`, `live`, `renorm`) against the exact
node oracle for two targets: the next token's log-probability at the last position
(`next`) and the top-1 minus top-2 logit difference there (`margin`), and aggregate over
seeds. A row carries the held-out loss (nats) and perplexity instead of an accuracy, and,
per mode, the docs/spec.md §5 metrics, per layer and by the distance `p - t`; under `drift`
the frozen mode's error split (docs/lm-verification.md) into norm drift (`ne_drift`),
attention-pattern change (`ne_attention`) and gating interference (`ne_gating`).

Every model of one dataset trains on the same data (data seed 0); the seed changes the
initialization and the batch order. Models are cached under
`cache_dir/<dataset>-<norm>-<position>-<key>/` as for the MLP comparison
(`bilens.experiments.compare`), keyed by the full model and training config and the
dataset; verification summaries beside them. `force=True` retrains and re-verifies.

Example:
    >>> result = compare_lm("synthetic-lm", seeds=1, out="runs/lm")     # doctest: +SKIP
    >>> result.table[0]["frozen-norm.ne"]                              # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from bilens.core.config import TransformerConfig
from bilens.core.errors import BilensError
from bilens.core.io import write_json
from bilens.experiments.compare import CachedRunner, CompareResult, Spec, compare_specs
from bilens.experiments.stats import LM_MODES, aggregate

CACHE_VERSION = 1
SUMMARY_VERSION = 2                     # 2: the features (`feature_ne`) in every summary
TOP_K = 10
LM_TARGET = "next"                      # the next token's log-probability at the last position
LM_EXTRA_TARGETS = ("margin",)          # top-1 minus top-2 logit at the last position
POSITIONS_LM = ("pre", "post")          # pre-norm first: the published bilinear LMs' layout
DATA_SEED = 0                           # one dataset draw for every model of a comparison

# The equal budget per dataset. `verify` sequences (of `verify_len` tokens) have every node
# ablated, four times (the real network and the three held variants), per target.
LM_PRESETS: dict[str, dict[str, Any]] = {
    "synthetic-lm": {"model": {"d_model": 32, "d_hidden": 64, "n_layers": 2, "n_heads": 2},
                     "train": {"steps": 600, "batch_size": 32, "lr": 1e-2},
                     "seq_len": 32, "verify": 16, "verify_len": 32},
    # 4 layers, d_model 256: the attribution issue's configuration; 1000 steps of 32 x 128
    "text": {"model": {"d_model": 256, "d_hidden": 1024, "n_layers": 4, "n_heads": 4},
             "train": {"steps": 1000, "batch_size": 32, "lr": 3e-3, "bf16": True},
             "seq_len": 128, "verify": 8, "verify_len": 32},
}

SEQ_PATHS = (
    "test_loss", "perplexity", "test_accuracy", "active_fraction", "train_time",
    *(f"{m}.{k}" for m in LM_MODES for k in ("ne", "pearson", "spearman", "top10", "sign",
                                              "pearson_at_p", "pearson_before_p",
                                              "sign_error_share", "feature_ne")),
    *(f"drift.{k}" for k in ("frozen_ne", "ne_drift", "ne_attention", "ne_gating",
                             "ne_attention_norms_live", "ne_interaction", "drift_share",
                             "attention_share", "gating_share")),
    "verify_time",
    *(f"{t}.{m}.{k}" for t in LM_EXTRA_TARGETS for m in LM_MODES for k in ("ne", "pearson",
                                                                            "top10", "sign")),
    *(f"{t}.drift.{k}" for t in LM_EXTRA_TARGETS for k in ("ne_drift", "ne_attention",
                                                            "ne_gating", "ne_interaction")),
)
SEQ_LIST_PATHS = (*(f"{m}.ne_per_layer" for m in LM_MODES),
                  *(f"{m}.ne_by_distance" for m in LM_MODES),
                  *(f"{t}.{m}.ne_by_distance" for t in LM_EXTRA_TARGETS for m in LM_MODES),
                  *(f"drift.{k}_per_layer" for k in ("ne_drift", "ne_attention", "ne_gating")))


def lm_preset_spec(dataset: str, steps: int | None = None, **model: Any) -> Spec:
    """The equal-budget spec of `LM_PRESETS[dataset]` (a `Spec` whose `train` holds
    `LMTrainConfig` fields), with overrides."""
    if dataset not in LM_PRESETS:
        raise BilensError(f"dataset: expected one of {sorted(LM_PRESETS)} for --kind "
                          f"transformer, got {dataset!r}")
    preset = LM_PRESETS[dataset]
    train = {**preset["train"], **({} if steps is None else {"steps": int(steps)})}
    return Spec(dataset, {**preset["model"], **model}, train)


def lm_cache_key(dataset: str, config: TransformerConfig, train_config: Any,
                 seq_len: int) -> str:
    """A short hash of everything that defines a trained transformer (the device excepted)."""
    train = {k: v for k, v in asdict(train_config).items() if k != "device"}
    blob = json.dumps({"v": CACHE_VERSION, "dataset": dataset, "model": config.to_dict(),
                       "train": train, "seq_len": seq_len, "data_seed": DATA_SEED},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class LMRunner(CachedRunner):
    """Trains (or reuses) and verifies transformers, holding token data between them.

    Args:
        cache_dir: where trained models and verification summaries are cached.
        force: retrain and re-verify even when a cached result exists.
        device: `"auto"`, `"cpu"`, `"cuda"`, ... for training and verification.
        n_verify: held-out sequences verified per model (default: the preset's).
        verify_len: tokens of each verified sequence (default: the preset's).
        target: what the attributions explain (docs/spec.md §9), at the last position.
        log: where progress lines go (default `print`).
    """

    kind = "transformer"

    def __init__(self, cache_dir: str | os.PathLike, *, force: bool = False,
                 device: str = "auto", n_verify: int | None = None,
                 verify_len: int | None = None, target: str = LM_TARGET,
                 log: Callable[[str], None] | None = print):
        self.cache_dir, self.force, self.device = Path(cache_dir), force, device
        self.n_verify, self.verify_len, self.target = n_verify, verify_len, target
        self.log = log or (lambda _msg: None)
        self._data: dict[tuple[str, int], Any] = {}
        for name, v in (("n_verify", n_verify), ("verify_len", verify_len)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise BilensError(f"{name}: expected a positive integer, got {v!r}")

    def data(self, name: str) -> Any:
        """The dataset's `TokenData` at its preset length, loaded once."""
        from bilens.core.lm_data import load_lm_data

        seq_len = LM_PRESETS[name]["seq_len"]
        if (name, seq_len) not in self._data:
            self._data[name, seq_len] = load_lm_data(name, seq_len, seed=DATA_SEED)
        return self._data[name, seq_len]

    def dataset(self, name: str, split: str) -> Any:
        """`data(name)` (the MLP runner's signature, for `decompose_compared`)."""
        return self.data(name)

    def configs(self, spec: Spec) -> tuple[TransformerConfig, Any]:
        """The `TransformerConfig` and `LMTrainConfig` of a spec (validated). Without a norm,
        pre- and post-norm are one network (every norm is the identity): both specs give
        the pre-norm config, so that network is trained and verified once."""
        from bilens.training.lm import LMTrainConfig

        names = {f.name for f in fields(LMTrainConfig)}
        unknown = sorted(set(spec.train) - names)
        if unknown:
            raise BilensError(f"train options {unknown} unknown; LMTrainConfig has "
                              f"{sorted(names)}")
        data = self.data(spec.dataset)
        model = dict(spec.model)
        if model.get("norm") == "none":
            model["norm_position"] = "pre"
        mc = TransformerConfig(vocab_size=data.vocab_size, n_ctx=LM_PRESETS[spec.dataset]
                               ["seq_len"], **model)
        return mc, LMTrainConfig(**{**spec.train, "device": self.device})

    def key(self, spec: Spec, mc: TransformerConfig, tc: Any) -> str:
        return lm_cache_key(spec.dataset, mc, tc, mc.n_ctx)

    def train(self, spec: Spec, mc: TransformerConfig, tc: Any) -> Any:
        from bilens.training.lm import train_lm

        return train_lm(mc, tc, self.data(spec.dataset), progress=False)

    def train_info(self, meta: dict[str, Any]) -> dict[str, Any]:
        return _train_info(meta)

    def verify_settings(self, dataset: str) -> dict[str, Any]:
        return {**self.settings_of(dataset), "modes": LM_MODES, "summary": SUMMARY_VERSION}

    def evaluate(self, spec: Spec, also: tuple[str, ...] = ()) -> dict[str, Any]:
        """Train or reuse the spec's model and verify it: one row (`summarize_sequence`)
        for `self.target`, and under `row[t]` the same for each target `t` of `also`."""
        model, info, summary = self.verified(spec, also)
        cfg = model.config
        return {"dataset": spec.dataset, "kind": "transformer", "norm": cfg.norm,
                "position": spec.model.get("norm_position", cfg.norm_position),
                "seed": int(spec.train.get("seed", 0)),
                "d_model": cfg.d_model, "d_hidden": cfg.d_hidden, "n_layers": cfg.n_layers,
                "n_heads": cfg.n_heads, "l1": float(spec.train.get("l1", 0.0)),
                "tags": dict(spec.tags), **info, **summary}

    def settings_of(self, dataset: str) -> dict[str, int]:
        """How many sequences of how many tokens `verify` uses for `dataset`."""
        preset = LM_PRESETS[dataset]
        return {"n_verify": self.n_verify or preset["verify"],
                "verify_len": self.verify_len or preset["verify_len"]}

    def verify(self, model: Any, dataset: str, target: str | None = None) -> dict[str, Any]:
        """Verify `model` on the first held-out sequences of `dataset`: every node of every
        layer ablated, in the real network and with each statistic held."""
        from bilens.analysis.verify_sequence import verify_sequence
        from bilens.core.device import resolve_device

        s = self.settings_of(dataset)
        rows = self.data(dataset).test[: s["n_verify"], : s["verify_len"] + 1]
        device = resolve_device(self.device)
        start = time.perf_counter()
        result = verify_sequence(model.to(device), rows[:, :-1].to(device),
                                 target=target or self.target, labels=rows[:, 1:].to(device),
                                 modes=LM_MODES, progress=False)
        summary = summarize_sequence(result.metrics)
        summary.update(n_verify=int(rows.shape[0]), verify_len=int(rows.shape[1] - 1),
                       active_fraction=sequence_active_fraction(
                           model, result.tensors["activation"]),
                       verify_time=time.perf_counter() - start)
        model.cpu()
        return summary


def sequence_active_fraction(model: Any, z: Any, threshold: float = 0.1) -> float:
    """The MLP networks' `active_fraction` (`bilens.training.train`) per node: channel `k` of
    layer `l` is active at position `t` when its write `|z| * ||D_l[:, k]||` exceeds
    `threshold` times the largest write of that layer at that position; averaged over
    sequences, positions, layers and channels. `z`: `[B, L, T, H]`."""
    import torch

    d_norms = torch.stack([layer.D.norm(dim=0) for layer in model.layers]).to(z)   # [L, H]
    write = z.abs() * d_norms[None, :, None, :]
    return float((write > threshold * write.amax(-1, keepdim=True)).double().mean())


def _train_info(meta: dict[str, Any]) -> dict[str, Any]:
    loss = float(meta.get("val_loss", math.nan))
    return {"test_loss": loss, "perplexity": float(meta.get("perplexity", math.nan)),
            "test_accuracy": float(meta.get("val_accuracy", math.nan)),
            "bigram_loss": float((meta.get("baselines") or {}).get("bigram", math.nan)),
            "rule_accuracy": dict(meta.get("rule_accuracy") or {}),
            "train_time": float(meta.get("wall_time", math.nan))}


def summarize_sequence(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers the comparison uses, read off a sequence `VerifyResult.metrics`.

    Returns:
        per mode: `ne`, `pearson`, `spearman`, `top10` recall, `sign` agreement, `ne_per_layer`,
        `ne_by_distance` (`[[p - t, NE], ...]`), Pearson of the nodes at `p`
        (`pearson_at_p`) and before it (`pearson_before_p`), `sign_error_share`, and the
        top-k node circuit `circuit` (`[[k, NE], ...]`), the NE of the features (channel
        `(l, k)` at every position at once, `feature_ne`); under `drift` the frozen mode's
        split: `frozen_ne`, `ne_drift` (norm drift), `ne_attention` (pattern change, norms
        held), `ne_gating`, `ne_attention_norms_live`, `ne_interaction`, their shares of
        the three-part sum, and per layer.
    """
    out: dict[str, Any] = {}
    for mode, m in metrics["modes"].items():
        o, types = m["overall"], m["node_types"]
        out[mode] = {
            "ne": o["normalized_error"], "pearson": o["pearson"], "spearman": o["spearman"],
            "top10": o.get(f"recall@{TOP_K}", math.nan), "sign": o["sign_agreement"],
            "sign_error_share": 1 - o["sign_agreement"],
            "pearson_at_p": types["at_p"]["pearson"],
            "pearson_before_p": types["before_p"]["pearson"],
            "ne_per_layer": [pl["normalized_error"] for pl in m["per_layer"]],
            "ne_by_distance": [[d["distance"], d["normalized_error"]]
                               for d in m["by_distance"]],
            "circuit": [[c["k"], c["normalized_error"]] for c in m.get("circuit", [])],
            "feature_ne": (metrics.get("features") or {}).get(mode, {}).get(
                "overall", {}).get("normalized_error", math.nan),
        }
    split = metrics["split"]
    out["drift"] = _split(split["overall"])
    for name, key in (("ne_drift", "norm_drift"), ("ne_attention", "attention_change"),
                      ("ne_gating", "gating")):
        out["drift"][f"{name}_per_layer"] = [pl[key] for pl in split["per_layer"]]
    return out


def _split(s: dict[str, float]) -> dict[str, float]:
    parts = s["norm_drift"] + s["attention_change"] + s["gating"]
    share = (lambda v: v / parts) if parts > 0 else (lambda v: math.nan)
    return {"frozen_ne": s["frozen_ne"], "ne_drift": s["norm_drift"],
            "ne_attention": s["attention_change"], "ne_gating": s["gating"],
            "ne_attention_norms_live": s["attention_change_norms_live"],
            "ne_interaction": s["interaction"], "drift_share": share(s["norm_drift"]),
            "attention_share": share(s["attention_change"]), "gating_share": share(s["gating"])}


def aggregate_lm(rows: list[dict[str, Any]], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """`stats.aggregate` over the sequence-model summary (`SEQ_PATHS`, `SEQ_LIST_PATHS`)."""
    table = aggregate(rows, by, paths=SEQ_PATHS, list_paths=SEQ_LIST_PATHS)
    for row in table:
        row["kind"] = "transformer"
    return table


def compare_lm(dataset: str = "synthetic-lm", seeds: int = 1,
               out: str | os.PathLike | None = None, *, steps: int | None = None,
               n_verify: int | None = None, device: str = "auto", force: bool = False,
               cache_dir: str | os.PathLike | None = None, spec: Spec | None = None,
               first_seed: int = 0, log: Callable[[str], None] | None = print,
               runner: LMRunner | None = None,
               configs: Iterable[tuple[str, str]] | None = None) -> CompareResult:
    """Train and verify none/rms/layer x pre/post transformers; aggregate over seeds.

    Args:
        dataset: `synthetic-lm` or `text`.
        seeds: seeds per configuration (the table gives mean and standard deviation).
        out: where `compare-lm.json` is written (None: nowhere; cache default `out/models`).
        steps: override the preset's optimizer steps (the budget stays equal).
        n_verify: held-out sequences verified per model (default: the preset's).
        device, force, cache_dir, first_seed, log: as for `bilens.experiments.compare`.
        spec: the base spec (default `lm_preset_spec(dataset, steps)`).
        runner: reuse an `LMRunner` instead.
        configs: only these `(norm, position)` pairs (default: all six), e.g. to split one
            comparison over processes; the parts' rows merge with `aggregate_lm`.

    Returns:
        A `CompareResult` (`settings["kind"] == "transformer"`); `.table` has one row per
        (norm, position), with every number of `SEQ_PATHS` as mean and `_std`.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise BilensError(f"seeds: expected a positive integer, got {seeds!r}")
    start = time.perf_counter()
    base = spec or lm_preset_spec(dataset, steps)
    if runner is None:
        cache = cache_dir or (Path(out) / "models" if out is not None else Path("runs/cache"))
        runner = LMRunner(cache, force=force, device=device, log=log, n_verify=n_verify)
    settings = {"kind": "transformer", "dataset": dataset, "seeds": seeds,
                "first_seed": first_seed, "model": base.model, "train": base.train,
                "seq_len": LM_PRESETS[dataset]["seq_len"], **runner.settings_of(dataset),
                "target": runner.target,
                "also_targets": [t for t in LM_EXTRA_TARGETS if t != runner.target],
                "modes": list(LM_MODES), "device": runner.device, "data_seed": DATA_SEED}
    specs = compare_specs(base, seeds, positions=POSITIONS_LM, first_seed=first_seed)
    if configs is not None:
        wanted = {tuple(c) for c in configs}
        specs = [s for s in specs if (s.model["norm"], s.model["norm_position"]) in wanted]
    rows: list[dict[str, Any]] = []
    for s in specs:                        # seeds outermost: a partial file holds whole seeds
        rows.append(runner.evaluate(s, also=LM_EXTRA_TARGETS))
        result = CompareResult(dataset, rows, aggregate_lm(rows, ("norm", "position")),
                               {**settings, "complete": len(rows) == len(specs)},
                               time.perf_counter() - start)
        if out is not None:                # after every model: a run cut short keeps its rows
            write_json(Path(out) / "compare-lm.json", result.to_dict())
    return result

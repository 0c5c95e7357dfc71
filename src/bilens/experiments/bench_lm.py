"""`bilens bench --kind transformer`: node attribution and the exact node oracle of the bilinear
transformer, timed side by side (docs/lm-verification.md).

Random weights, float32, target `next` at the last position, zero baseline. Rows:

1. one forward pass; attribution of every node in each mode (interleaved with it); on CUDA,
   the forward and `renorm` each captured as a CUDA graph (`CapturedAttribution`) too;
   captum's `LayerGradientXActivation` over the layers' `z` (one call, and one per layer);
2. the oracle at each precision, checked against the float64 oracle on two sequences
   (normwise, `max|diff| / max|ref| <= 1e-5`) before any of its time counts; then every node
   of every sequence, with its FLOP count, FLOP/s and share of the card's float32 peak;
3. a subset (sequence 0, layer 0, every `every`-th position): the oracle at each precision
   against a plain prefix-reusing batched loop (pre-norm), a per-node hook loop that reruns
   the network, and captum's `LayerFeatureAblation` at its best `perturbations_per_eval`.
"""

from __future__ import annotations

import resource
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from bilens.ablation import resolve_backend
from bilens.ablation._engine.sequence_plan import SequencePlan
from bilens.ablation.sequence import ablate_prepared, sequence_ablation_effects
from bilens.attribution.captured import CapturedAttribution, capture
from bilens.attribution.sequence import SEQUENCE_MODES, attribute_sequence
from bilens.core.config import TransformerConfig
from bilens.core.errors import BilensError
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.sequence import prepare_sequence
from bilens.experiments.bench import TOL, Rows
from bilens.experiments.competitors import _captum
from bilens.experiments.competitors_lm import (
    ZSeq,
    captum_gxa,
    captum_node_ablation,
    hook_loop,
    oracle_flops,
    prefix_loop,
)
from bilens.experiments.timing import agreement, interleaved, machine, timed


@dataclass
class LMBenchConfig:
    """What `bilens bench --kind transformer` times (defaults: the issue's H200 shape)."""

    n: int = 128
    n_layers: int = 4
    d_model: int = 256
    d_hidden: int = 1024
    n_heads: int = 4
    seq_len: int = 64
    vocab_size: int = 4096
    norm: str = "rms"
    position: str = "pre"
    device: str = "cpu"
    memory: str = "16GiB"
    precision: str = "fp32"              # a comma list; each row checked against float64
    backend: str = "eager"               # eager | compile | triton (fp32 rows: compile)
    every: int = 8                       # the subset's positions: every k-th of layer 0
    captum: bool = True
    loop: bool = True
    full: bool = True                    # every node of every sequence
    ppe: tuple[int, ...] = (16, 64, 256, 1024)
    repeats: int = 3
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick(cls, **over) -> LMBenchConfig:
        """CPU-sized: 8 sequences, 2 layers x 128 channels, d_model 64, 32 tokens."""
        base = dict(n=8, n_layers=2, d_model=64, d_hidden=128, seq_len=32, vocab_size=512,
                    memory="1GiB", every=1, repeats=5)
        return cls(**{**base, **over})

    def rows_to_run(self) -> list[tuple[str, str]]:
        """`(backend, precision)` per precision of the list (fp32 under triton: compile)."""
        return [("compile" if self.backend == "triton" and p == "fp32" else self.backend, p)
                for p in dict.fromkeys(self.precision.split(","))]


def run_lm_bench(cfg: LMBenchConfig, log: Callable[[str], None] = print) -> dict:
    """Measure every row; returns the JSON-ready results (ratios, sizes, agreement)."""
    device = torch.device(cfg.device)
    if cfg.captum:
        _captum()                                 # fail before any work if it is missing
    with warnings.catch_warnings():              # bad names and pairs: before any work
        warnings.simplefilter("ignore")          # (where they run: below, with its notes)
        for backend, prec in cfg.rows_to_run():
            resolve_backend(backend, prec, torch.device("cuda"), torch.float32)
    mcfg = TransformerConfig(vocab_size=cfg.vocab_size, n_ctx=cfg.seq_len, d_model=cfg.d_model,
                             d_hidden=cfg.d_hidden, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                             norm=cfg.norm, norm_position=cfg.position)
    torch.manual_seed(cfg.seed)
    model = BilinearTransformer(mcfg).to(device).eval()
    data = torch.randint(cfg.vocab_size, (cfg.n, cfg.seq_len + 1), device=device)
    res: dict = {"config": {k: v for k, v in asdict(cfg).items() if k != "notes"},
                 "machine": machine(device), "rows": {}}
    nodes = cfg.n * cfg.n_layers * cfg.seq_len * cfg.d_hidden
    log(f"bilens bench --kind transformer: {cfg.n_layers} layers x {cfg.d_hidden} channels, "
        f"d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.position} {cfg.norm}; {cfg.n} "
        f"random sequences of {cfg.seq_len} tokens ({nodes:,} nodes), target next at the "
        f"last position; {res['machine']}")
    rows = Rows(res["rows"], log)
    znet = ZSeq(model, data[:, -1])
    t_fwd = _attribution_rows(cfg, model, znet, data, rows, res)
    one = prepare_sequence(model, data[:1], "next", None, "zero", None, None)[1:]
    t_subset = _oracle_rows(cfg, model, data, one, t_fwd, rows, res)
    _subset_competitors(cfg, model, data, one, t_subset, rows, res)
    res["sizes"] = {"n_sequences": cfg.n, "seq_len": cfg.seq_len, "nodes": nodes}
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res["notes"] = cfg.notes
    _summary(res, log)
    return res


def _attribution_rows(cfg: LMBenchConfig, model: BilinearTransformer, znet: ZSeq, data: Tensor,
                      rows: Rows, res: dict) -> float:
    """The forward, every attribution mode and captum's gradient x activation, interleaved;
    returns the forward's seconds."""
    tokens = data[:, :-1]
    fast: dict[str, Callable[[], object]] = {"forward": lambda: model(tokens)}
    renorm = "triton" if cfg.backend == "triton" and model.device.type == "cuda" else None
    for mode in SEQUENCE_MODES:                 # renorm's closed form: the Triton kernel there
        fast[f"attribute {mode}"] = lambda m=mode: attribute_sequence(
            model, data, target="next", mode=m, backend=renorm)
    if model.device.type == "cuda":          # the forward and renorm, each as a CUDA graph
        fast["forward, CUDA graph"] = _captured_forward(model, tokens)
        att = CapturedAttribution(model, data, target="next", mode="renorm", backend=renorm)
        fast["attribute renorm, CUDA graph"] = lambda: att(data)
    if cfg.captum:
        fast["captum LayerGradientXActivation"] = lambda: captum_gxa(znet, tokens)
        fast["captum LayerGradientXActivation per layer"] = (
            lambda: captum_gxa(znet, tokens, per_layer=True))
    got = interleaved(fast, data.device, cfg.repeats)
    t_fwd = got["forward"][0]
    rows.add("forward", t_fwd)
    live = got["attribute live"][1]
    for name in list(fast)[1:]:
        t, out, peak = got[name]
        extra = ({"agree": agreement(out, -live)} if "captum" in name else  # g z = -g c
                 {"agree": agreement(out, got["attribute renorm"][1])} if "renorm, CUDA" in name
                 else {})
        rows.add(name, t, over_forward=t / t_fwd, peak_bytes=peak, **extra)
    for mode in SEQUENCE_MODES:
        res[f"attribution_{mode.replace('-', '_')}_over_forward"] = (
            rows.seconds(f"attribute {mode}") / t_fwd)
    res["renorm_backend"] = renorm or "eager"          # how the renorm row's closed form ran
    if "forward, CUDA graph" in fast:
        t_graph = rows.seconds("attribute renorm, CUDA graph")
        res["attribution_renorm_graph_over_forward"] = t_graph / t_fwd
        res["attribution_renorm_graph_over_graphed_forward"] = (
            t_graph / rows.seconds("forward, CUDA graph"))
    if cfg.captum:
        t_live = rows.seconds("attribute live")
        res["attribution_speedup_vs_captum"] = (
            rows.seconds("captum LayerGradientXActivation") / t_live)
        res["attribution_speedup_vs_captum_per_layer"] = (
            rows.seconds("captum LayerGradientXActivation per layer") / t_live)
    return t_fwd


def _captured_forward(model: BilinearTransformer, tokens: Tensor) -> Callable[[], Tensor]:
    """`model(tokens)` recorded once as a CUDA graph: a call replays it and copies the logits
    (as the attribution's captured call copies its prediction)."""
    with torch.no_grad():
        graph, out = capture(lambda: model(tokens, check=False), tokens.device, what="the forward")
    return lambda: (graph.replay(), out.clone())[1]


def _oracle_rows(cfg: LMBenchConfig, model: BilinearTransformer, data: Tensor, one: tuple,
                 t_fwd: float, rows: Rows, res: dict) -> dict[str, tuple[float, dict]]:
    """Each precision's oracle: checked against float64, then every node (`full`) and the
    subset (sequence 0: `one` is its prepared `(run, target, baselines)`); returns the
    subset's `{row: (seconds, effects by (l, t))}`."""
    device = data.device
    m64 = BilinearTransformer(model.config).to(device, torch.float64)
    m64.load_state_dict(model.state_dict())
    truth = sequence_ablation_effects(m64, data[:2], target="next", memory=cfg.memory)
    del m64
    _, run, tgt, b = prepare_sequence(model, data, "next", None, "zero", None, None)
    groups = _groups(cfg)
    subset = {}
    for backend, prec in cfg.rows_to_run():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ran = resolve_backend(backend, prec, device, model.dtype)
            err = agreement(sequence_ablation_effects(
                model, data[:2], target="next", memory=cfg.memory, backend=backend,
                precision=prec), truth)
        cfg.notes.extend(dict.fromkeys(str(w.message) for w in caught
                                       if str(w.message).startswith("bilens:")))
        name = f"oracle {ran[0]} {ran[1]}"
        if f"subset {name}" in subset:           # two asked for, one ran (a fallback)
            continue
        if err > TOL:
            raise BilensError(f"{name}: the oracle disagrees with float64 ({err:.1e} > {TOL:g}):"
                              f" no timing counts (report this as a bug)")
        plan = SequencePlan(model, *one, precision=ran[1], backend=ran[0])
        t, eff, _ = timed(lambda plan=plan: {g: plan.effects(*g, slice(0, 1), slice(None))[0]
                                             for g in groups}, device, cfg.repeats)
        subset[f"subset {name}"] = (t, eff)
        rows.add(f"subset {name}", t, agree_float64=err)
        if cfg.full:
            t, _, peak = timed(lambda r=ran: ablate_prepared(
                model, run, tgt, b, frozen_norm=False, frozen_attn=False,
                layers=list(range(cfg.n_layers)), memory=cfg.memory, progress=False,
                backend=r[0], precision=r[1]), device, 1,
                warmup=device.type == "cpu")        # a GPU's is warm from the subset's run
            flops = oracle_flops(model.config, cfg.n, cfg.seq_len)
            rows.add(f"{name}, every node", t, agree_float64=err, flops=flops,
                     flops_per_s=flops / t, over_forward=t / t_fwd, peak_bytes=peak)
            res.setdefault("oracle_seconds", {})[name] = t
    return subset


def _groups(cfg: LMBenchConfig) -> list[tuple[int, int]]:
    """The subset: layer 0 at every `every`-th position."""
    return [(0, t) for t in range(0, cfg.seq_len, cfg.every)]


def _subset_competitors(cfg: LMBenchConfig, model: BilinearTransformer, data: Tensor,
                        one: tuple, subset: dict[str, tuple[float, dict]], rows: Rows,
                        res: dict) -> None:
    """The subset's prefix-reusing loop, hook loop and captum, against the fastest oracle."""
    device, groups, tokens = data.device, _groups(cfg), data[:1, :-1]
    best = min(subset, key=lambda k: subset[k][0])
    t_ours, ours = subset[best]
    ref = torch.stack([ours[g] for g in groups])                          # [groups, H]
    res["subset"] = {"nodes": len(groups) * cfg.d_hidden, "fastest": best, "seconds": t_ours}
    if cfg.position == "pre":
        t, pre, _ = timed(lambda: prefix_loop(model, *one, groups), device,
                          cfg.repeats)
        rows.add("subset prefix-reusing batched loop", t,
                 agree=agreement(torch.stack([pre[g] for g in groups]), ref))
        res["oracle_speedup_vs_prefix_loop"] = t / t_ours
    else:
        cfg.notes.append("the prefix-reusing loop is written for pre-norm: not run")
    znet = ZSeq(model, data[:1, -1])
    if cfg.loop:
        t, hooks, _ = timed(lambda: hook_loop(znet, tokens, groups), device, 1, warmup=False)
        rows.add("subset per-node hook loop", t, agree=agreement(hooks, ref))
        res["oracle_speedup_vs_hook_loop"] = t / t_ours
    if cfg.captum:
        captum_node_ablation(znet, tokens, groups[:1], max(cfg.ppe))       # warm-up
        pick = {p: timed(lambda p=p: captum_node_ablation(znet, tokens, groups, p), device, 1,
                         warmup=False) for p in cfg.ppe}
        ppe = min(pick, key=lambda p: pick[p][0])
        rows.add(f"subset captum LayerFeatureAblation ppe={ppe}", pick[ppe][0],
                 agree=agreement(pick[ppe][1], ref),
                 ppe_tried={str(k): round(v[0], 4) for k, v in pick.items()})
        res["oracle_speedup_vs_captum"] = pick[ppe][0] / t_ours


def _summary(res: dict, log: Callable[[str], None]) -> None:
    """The ratios, printed last."""
    log("ratios:")
    for key, value in res.items():
        if key.startswith(("attribution_", "oracle_speedup")):
            log(f"  {key:<48} {value:8.2f}")
    peak = res["machine"].get("peaks")
    for name, r in res["rows"].items():
        if "flops_per_s" in r:
            share = f" = {r['flops_per_s'] / peak['fp32']:.0%} of the fp32 peak" if peak else ""
            log(f"  {name}: {r['flops'] / 1e12:.3g} TFLOP in {r['seconds']:.2f} s, "
                f"{r['flops_per_s'] / 1e12:.2f} TFLOP/s float32-equivalent{share}")
    log(f"  peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB")
    for note in res.get("notes", []):
        log(f"  note: {note}")

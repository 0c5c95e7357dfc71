"""`bilens bench`: attribution and exhaustive ablation against one forward pass, captum and a
plain per-channel hook loop, on the same model and inputs, in one run.

Every row is checked before its time counts: the fast ablation (float32) against its own
float64 run (`tests/test_ablation.py` ties that to the SPEC reference), captum and the hook
loop against the same float64 truth, attribution (live) against captum's gradient x
activation. Agreement is normwise, `max|a - ref| / max|ref|` (METHOD: `|out - ref| / |ref|`).
captum is a bench dependency only (`pip install bilens[bench]`), imported lazily; the
competitors are in `experiments.competitors`, the timing rules in `experiments.timing`.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import json
import resource
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from bilens.ablation import ablation_effects, resolve_backend
from bilens.attribution.predict import attribute
from bilens.core.config import ModelConfig
from bilens.core.errors import BilensError
from bilens.core.models.mlp import BilinearNet
from bilens.experiments.competitors import (
    ZNet,
    _captum,
    captum_ablation,
    captum_gxa,
    hook_loop,
)
from bilens.experiments.timing import agreement, interleaved, machine, timed

TOL = 1e-5


@dataclass
class BenchConfig:
    """What to measure (defaults: the issue's GPU row, 4 x 1024 channels, 10,000 inputs)."""

    n: int = 10_000
    n_layers: int = 4
    d_model: int = 256
    d_hidden: int = 1024
    d_in: int = 784
    n_out: int = 10
    norm: str = "rms"
    position: str = "post"
    device: str = "cpu"
    memory: str = "4GiB"
    precision: str = "fp32"
    backend: str = "eager"              # eager | compile | triton (fp32 rows: compile)
    data: str = "random"                 # "random" or a dataset name (its test inputs)
    captum: bool = True
    loop: bool = True
    ppe: tuple[int, ...] = (16, 64, 256)
    ppe_inputs: int = 256                # inputs for picking captum's best ppe
    repeats: int = 3
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick(cls, **over) -> BenchConfig:
        """A CPU-sized set that runs in well under a minute."""
        base = dict(n=32, d_model=128, d_hidden=256, ppe=(16, 64, 256), ppe_inputs=32,
                    repeats=5)
        return cls(**{**base, **over})


def ablation_flops(cfg: ModelConfig, n: int) -> float:
    """Float32-equivalent matmul flops of the fast exhaustive ablation (every channel)."""
    d, H, L = cfg.d_model, cfg.d_hidden, cfg.n_layers
    per_channel = sum(2 * d * H + 6 * d * H * (L - 2 - l) for l in range(L - 1))
    return float(n) * H * per_channel


def forward_flops(cfg: ModelConfig, n: int) -> float:
    return float(n) * (2 * cfg.d_in * cfg.d_model + 6 * cfg.d_model * cfg.d_hidden * cfg.n_layers
                       + 2 * cfg.d_model * cfg.n_out)


def build(cfg: BenchConfig) -> tuple[BilinearNet, Tensor, str]:
    """A randomly initialized model (timing does not depend on the weights) and inputs."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    mcfg = ModelConfig(d_in=cfg.d_in, d_model=cfg.d_model, d_hidden=cfg.d_hidden,
                       n_layers=cfg.n_layers, n_out=cfg.n_out, norm=cfg.norm,
                       norm_position=cfg.position)
    model = BilinearNet(mcfg).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    source = "random inputs"
    x = torch.rand(cfg.n, cfg.d_in, device=device)
    if cfg.data != "random":
        try:
            from bilens.core.data import load_dataset
            ds = load_dataset(cfg.data, "test", n=cfg.n)
            if ds.x.shape[1] == cfg.d_in:
                x, source = ds.x[:cfg.n].to(device, torch.float32), f"{cfg.data} test inputs"
                if x.shape[0] < cfg.n:
                    x = x.repeat(-(-cfg.n // x.shape[0]), 1)[:cfg.n]
        except BilensError as err:      # data missing here: timing does not depend on it
            cfg.notes.append(f"{cfg.data} unavailable ({type(err).__name__}): random inputs")
    return model, x, source


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Measure every row; returns the JSON-ready results (ratios, sizes, agreement)."""
    device = torch.device(cfg.device)
    if cfg.captum:
        _captum()                                 # fail before any work if it is missing
    model, x, source = build(cfg)
    mcfg = model.config
    res: dict = {"config": {k: v for k, v in asdict(cfg).items() if k != "notes"},
                 "inputs": source, "machine": machine(device), "rows": {}}
    log(f"bilens bench: {mcfg.n_layers} layers x {mcfg.d_hidden} channels, d_model "
        f"{mcfg.d_model}, {mcfg.norm_position} {mcfg.norm}; {cfg.n} {source}; {res['machine']}")
    rows = Rows(res["rows"], log)
    with torch.no_grad():
        classes = model(x).argmax(-1)
    znet = ZNet(model)
    t_fwd = _attribution_rows(cfg, model, znet, x, classes, rows, res)
    m64 = BilinearNet(mcfg).to(device, torch.float64)
    m64.load_state_dict(model.state_dict())
    truth = ablation_effects(m64, x.double(), target=classes, memory=cfg.memory)
    del m64
    t_ours = _ablation_rows(cfg, model, x, classes, truth, t_fwd, rows)
    res["ablation_seconds"] = t_ours
    if cfg.captum:
        res["ablation_speedup_vs_captum"] = _captum_row(cfg, znet, x, classes, truth, rows) / t_ours
    if cfg.loop:
        t, loop, peak = timed(lambda: hook_loop(znet, x, classes), device, 1, warmup=False)
        rows.add("per-channel hook loop", t, agree=agreement(loop, truth), peak_bytes=peak)
        res["ablation_speedup_vs_loop"] = t / t_ours
    res["sizes"] = {"n_inputs": cfg.n, "n_layers": mcfg.n_layers, "d_model": mcfg.d_model,
                    "d_hidden": mcfg.d_hidden, "channels": mcfg.n_layers * mcfg.d_hidden}
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res["notes"] = cfg.notes
    summary(res, log)
    return res


class Rows:
    """The result rows, each logged as it is measured."""

    def __init__(self, rows: dict, log: Callable[[str], None]):
        self.rows, self.log = rows, log

    def add(self, name: str, seconds: float, **extra) -> None:
        self.rows[name] = {"seconds": seconds, **extra}
        more = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in extra.items())
        self.log(f"  {name:<44} {seconds * 1e3:11.2f} ms  {more}")

    def seconds(self, name: str) -> float:
        return self.rows[name]["seconds"]


def _attribution_rows(cfg: BenchConfig, model: BilinearNet, znet: ZNet, x: Tensor,
                      classes: Tensor, rows: Rows, res: dict) -> float:
    """The forward pass, attribution (frozen, live) and captum's gradient x activation,
    interleaved; returns the forward's seconds."""
    device = x.device
    fast: dict[str, Callable[[], object]] = {
        "forward": lambda: model(x),                                # the logits only
        "forward keeping intermediates": lambda: model.run(x, check=False)}
    for mode in ("frozen", "live"):
        fast[f"attribute {mode}"] = lambda m=mode: attribute(model, x, target="predicted",
                                                             mode=m)
    if cfg.captum:
        fast["captum LayerGradientXActivation"] = lambda: captum_gxa(znet, x, classes)
        fast["captum LayerGradientXActivation per layer"] = (
            lambda: captum_gxa(znet, x, classes, per_layer=True))
    got = interleaved(fast, device, cfg.repeats)       # round-robin: load hits all alike
    t_fwd = got["forward"][0]
    rows.add("forward", t_fwd, flops=forward_flops(model.config, cfg.n))
    for name in list(fast)[1:]:
        t, out, peak = got[name]
        extra = {"agree": agreement(-got["attribute live"][1], out)} if "captum" in name else {}
        rows.add(name, t, over_forward=t / t_fwd, peak_bytes=peak, **extra)
    live = rows.seconds("attribute live")
    res["attribution_over_forward"] = rows.seconds("attribute frozen") / t_fwd
    res["attribution_live_over_forward"] = live / t_fwd
    if cfg.captum:
        res["attribution_speedup_vs_captum"] = (
            rows.seconds("captum LayerGradientXActivation") / live)
        res["attribution_speedup_vs_captum_per_layer"] = (
            rows.seconds("captum LayerGradientXActivation per layer") / live)
    return t_fwd


def _ablation_rows(cfg: BenchConfig, model: BilinearNet, x: Tensor, classes: Tensor,
                   truth: Tensor, t_fwd: float, rows: Rows) -> float:
    """The fast ablation at each precision, checked against float64 before its time counts;
    returns the best agreeing row's seconds."""
    device = x.device
    for prec in dict.fromkeys(("fp32", *cfg.precision.split(","))):
        backend = "compile" if cfg.backend == "triton" and prec == "fp32" else cfg.backend
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ran = resolve_backend(backend, prec, device, torch.float32)
            t, ours, peak = timed(lambda p=prec, b=backend: ablation_effects(
                model, x, target=classes, precision=p, backend=b, memory=cfg.memory),
                device, cfg.repeats)
        err = agreement(ours, truth)
        name = f"ablation bilens {prec}"
        if ran[0] == "triton":
            name += " (Triton GEMMs, float16)" if ran[1] == "3xfp16" else " (Triton GEMMs)"
        fell_back = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
                     and str(w.message).startswith("bilens:")]
        if fell_back:                     # (on a CPU every row runs eager fp32: no label)
            name += " (fell back: see notes)" if device.type == "cuda" else ""
            cfg.notes.extend(dict.fromkeys(fell_back))
        rows.add(name, t, agree=err, ok=err <= TOL,
                 flops_per_s=ablation_flops(model.config, cfg.n) / t, peak_bytes=peak,
                 over_forward=t / t_fwd)
    ok = [r for r in rows.rows if r.startswith("ablation bilens") and rows.rows[r]["ok"]]
    if not ok:
        raise BilensError("the fast ablation does not agree with float64 to 1e-5: no timing "
                          "counts (report this as a bug)")
    return min(rows.seconds(r) for r in ok)


def _captum_row(cfg: BenchConfig, znet: ZNet, x: Tensor, classes: Tensor, truth: Tensor,
                rows: Rows) -> float:
    """captum's `LayerFeatureAblation` at its best `perturbations_per_eval` (picked on a
    subset); returns its seconds on every input."""
    device = x.device
    captum_ablation(znet, x[:2], classes[:2], max(cfg.ppe))                 # warm-up
    n_pick = min(cfg.n, cfg.ppe_inputs)
    pick = {p: timed(lambda p=p: captum_ablation(znet, x[:n_pick], classes[:n_pick], p),
                     device, 1, warmup=False) for p in cfg.ppe}
    ppe = min(pick, key=lambda p: pick[p][0])
    if n_pick == cfg.n:                           # the sweep ran on every input: keep its best
        t, cap, peak = pick[ppe]
    else:
        t, cap, peak = timed(lambda: captum_ablation(znet, x, classes, ppe), device, 1,
                             warmup=False)
    rows.add(f"captum LayerFeatureAblation ppe={ppe}", t, agree=agreement(cap, truth),
             peak_bytes=peak, ppe_tried={str(k): round(v[0], 4) for k, v in pick.items()})
    return t


def summary(res: dict, log: Callable[[str], None] = print) -> None:
    """The ratios, printed last."""
    log("ratios:")
    for key in ("attribution_over_forward", "attribution_live_over_forward",
                "attribution_speedup_vs_captum", "attribution_speedup_vs_captum_per_layer",
                "ablation_speedup_vs_captum",
                "ablation_speedup_vs_loop"):
        if key in res:
            log(f"  {key:<40} {res[key]:8.2f}")
    peak = res["machine"].get("peaks")
    for name, r in res["rows"].items():
        if "flops_per_s" in r and peak:
            log(f"  {name}: {r['flops_per_s'] / 1e12:.1f} TFLOP/s fp32-equivalent = "
                f"{r['flops_per_s'] / peak['fp32']:.0%} of the fp32 peak")
    log(f"  peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB")
    for note in res.get("notes", []):
        log(f"  note: {note}")


def write_json(res: dict, path: str) -> None:
    """Write the results atomically (JSON)."""
    from bilens.core.io import write_json as _write
    _write(path, json.loads(json.dumps(res, default=str)))

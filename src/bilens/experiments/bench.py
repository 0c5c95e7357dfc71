"""`bilens bench`: attribution and exhaustive ablation against one forward pass, captum and a
plain per-channel hook loop, on the same model and inputs, in one run.

Every row is checked before its time counts: the fast ablation (float32) against its own
float64 run (`tests/test_ablation.py` ties that to the SPEC reference), captum and the hook
loop against the same float64 truth, attribution (live) against captum's gradient x
activation. Agreement is normwise, `max|a - ref| / max|ref|` (METHOD: `|out - ref| / |ref|`).
captum is a bench dependency only (`pip install bilens[bench]`), imported lazily.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import contextlib
import json
import platform
import resource
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from bilens.ablation import ablation_effects, resolve_backend
from bilens.core.config import ModelConfig
from bilens.core.errors import BilensError
from bilens.core.models.mlp import BilinearNet

PEAKS = {"H200": {"fp32": 67e12, "tf32": 494e12}, "H100": {"fp32": 67e12, "tf32": 494e12}}
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


class ZNet(nn.Module):
    """The same network with an `nn.Identity` on every `z`, for captum and hooks."""

    def __init__(self, model: BilinearNet):
        super().__init__()
        self.model = model
        self.z = nn.ModuleList(nn.Identity() for _ in model.layers)

    def forward(self, x: Tensor) -> Tensor:
        m, post = self.model, self.model.config.norm_position == "post"
        h = m.embed(x)
        for l, layer in enumerate(m.layers):
            u = h if post else layer.norm(h)[0]
            h = h + self.z[l]((u @ layer.L.T) * (u @ layer.R.T)) @ layer.D.T
            if post:
                h = layer.norm(h)[0]
        return m.head(h if post else m.final_norm(h)[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1,
          warmup: bool = True) -> tuple[float, object, int]:
    """Seconds of `repeats` calls after one warm-up (median on a GPU; fastest on a CPU,
    which other jobs share: load only ever adds time), last result, peak bytes."""
    if warmup:
        fn()
    times, out = [], None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
        return statistics.median(times), out, peak
    return min(times), out, 0


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device,
                repeats: int) -> dict[str, tuple[float, object, int]]:
    """`timed` for several functions, called round-robin (one warm-up round first)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, object] = {}
    peaks = dict.fromkeys(fns, 0)
    for rep in range(repeats + 1):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            _sync(device)
            start = time.perf_counter()
            with torch.no_grad() if name.startswith("forward") else contextlib.nullcontext():
                outs[name] = fn()
            _sync(device)
            if rep:
                times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) - base)
    pick = statistics.median if device.type == "cuda" else min
    return {k: (pick(times[k]), outs[k], peaks[k]) for k in fns}


def agreement(got: Tensor, ref: Tensor) -> float:
    """Normwise relative error `max|got - ref| / max|ref|`."""
    got, ref = got.double().to(ref.device), ref.double()
    return ((got - ref).abs().max() / ref.abs().max()).item()


def ablation_flops(cfg: ModelConfig, n: int) -> float:
    """Float32-equivalent matmul flops of the fast exhaustive ablation (every channel)."""
    d, H, L = cfg.d_model, cfg.d_hidden, cfg.n_layers
    per_channel = sum(2 * d * H + 6 * d * H * (L - 2 - l) for l in range(L - 1))
    return float(n) * H * per_channel


def forward_flops(cfg: ModelConfig, n: int) -> float:
    return float(n) * (2 * cfg.d_in * cfg.d_model + 6 * cfg.d_model * cfg.d_hidden * cfg.n_layers
                       + 2 * cfg.d_model * cfg.n_out)


def hook_loop(znet: ZNet, x: Tensor, classes: Tensor) -> Tensor:
    """The plain way: a forward hook zeroes one channel, one full forward per channel."""
    cfg = znet.model.config
    out = x.new_empty(x.shape[0], cfg.n_layers, cfg.d_hidden)
    with torch.no_grad():
        f0 = znet(x).gather(1, classes[:, None])[:, 0]
        for l in range(cfg.n_layers):
            for k in range(cfg.d_hidden):
                def hook(_mod, _inp, z, k=k):
                    z = z.clone()
                    z[:, k] = 0.0
                    return z
                handle = znet.z[l].register_forward_hook(hook)
                out[:, l, k] = znet(x).gather(1, classes[:, None])[:, 0] - f0
                handle.remove()
    return out


def _captum():
    try:
        from captum.attr import LayerFeatureAblation, LayerGradientXActivation
    except ImportError as err:
        raise BilensError("bilens bench compares against captum, which is not installed; "
                          "pip install 'bilens[bench]' (or captum), or pass --no-captum") from err
    return LayerFeatureAblation, LayerGradientXActivation


class _Picked(nn.Module):
    """`logits[i, class_i]`; captum repeats the batch `ppe` times, so row `j` is input
    `j mod B` (captum rejects a per-input `target` with `perturbations_per_eval > 1`)."""

    def __init__(self, znet: ZNet, classes: Tensor):
        super().__init__()
        self.znet, self.classes = znet, classes

    def forward(self, x: Tensor) -> Tensor:
        logits = self.znet(x)
        idx = self.classes.repeat(logits.shape[0] // self.classes.shape[0])
        return logits.gather(1, idx[:, None])[:, 0]


def captum_ablation(znet: ZNet, x: Tensor, classes: Tensor, ppe: int) -> Tensor:
    """captum's `LayerFeatureAblation` on every layer's `z` (zero baseline), as effects."""
    LayerFeatureAblation, _ = _captum()
    picked = _Picked(znet, classes)
    outs = []
    for layer in znet.z:
        attr = LayerFeatureAblation(picked, layer).attribute(x, layer_baselines=0.0,
                                                             perturbations_per_eval=ppe)
        outs.append(-attr)                        # captum: f(clean) - f(ablated)
    return torch.stack(outs, 1)


def captum_gxa(znet: ZNet, x: Tensor, classes: Tensor, per_layer: bool = False) -> Tensor:
    """captum's `LayerGradientXActivation` over all layers: `g * z`.

    `per_layer=False` hands captum the list of layers (one forward and backward: the
    strongest way to call it); `per_layer=True` calls it once per layer, the usual idiom of
    layer attribution and the way the issue's reference timing (640 ms on the H200) ran.
    """
    _, LayerGradientXActivation = _captum()
    if per_layer:
        return torch.stack([LayerGradientXActivation(znet, layer).attribute(x, target=classes)
                            for layer in znet.z], 1)
    attrs = LayerGradientXActivation(znet, list(znet.z)).attribute(x, target=classes)
    return torch.stack(list(attrs), 1)


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
        except Exception as err:  # noqa: BLE001 (timing does not depend on the data)
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
    rows = res["rows"]
    log(f"bilens bench: {mcfg.n_layers} layers x {mcfg.d_hidden} channels, d_model "
        f"{mcfg.d_model}, {mcfg.norm_position} {mcfg.norm}; {cfg.n} {source}; {res['machine']}")

    def row(name: str, seconds: float, **extra) -> None:
        rows[name] = {"seconds": seconds, **extra}
        more = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in extra.items())
        log(f"  {name:<44} {seconds * 1e3:11.2f} ms  {more}")

    with torch.no_grad():
        classes = model(x).argmax(-1)
    znet = ZNet(model)
    fast: dict[str, Callable[[], object]] = {
        "forward": lambda: model(x),                                # the logits only
        "forward keeping intermediates": lambda: model.run(x, check=False)}
    try:
        from bilens.attribution.predict import attribute
    except ImportError:
        attribute = None
        cfg.notes.append("bilens.attribution.predict missing: attribution rows skipped")
    if attribute is not None:
        for mode in ("frozen", "live"):
            fast[f"attribute {mode}"] = lambda m=mode: attribute(model, x, target="predicted",
                                                                 mode=m)
        if cfg.captum:
            fast["captum LayerGradientXActivation"] = lambda: captum_gxa(znet, x, classes)
            fast["captum LayerGradientXActivation per layer"] = (
                lambda: captum_gxa(znet, x, classes, per_layer=True))
    got = interleaved(fast, device, cfg.repeats)       # round-robin: load hits all alike
    t_fwd = got["forward"][0]
    row("forward", t_fwd, flops=forward_flops(mcfg, cfg.n))
    for name in list(fast)[1:]:
        t, out, peak = got[name]
        extra = {"agree": agreement(-got["attribute live"][1], out)} if "captum" in name else {}
        row(name, t, over_forward=t / t_fwd, peak_bytes=peak, **extra)
    if attribute is not None:
        res["attribution_over_forward"] = rows["attribute frozen"]["seconds"] / t_fwd
        res["attribution_live_over_forward"] = rows["attribute live"]["seconds"] / t_fwd
        if cfg.captum:
            res["attribution_speedup_vs_captum"] = (
                rows["captum LayerGradientXActivation"]["seconds"]
                / rows["attribute live"]["seconds"])
            res["attribution_speedup_vs_captum_per_layer"] = (
                rows["captum LayerGradientXActivation per layer"]["seconds"]
                / rows["attribute live"]["seconds"])

    # exhaustive ablation ------------------------------------------------------------------
    m64 = BilinearNet(mcfg).to(device, torch.float64)
    m64.load_state_dict(model.state_dict())
    truth = ablation_effects(m64, x.double(), target=classes, memory=cfg.memory)
    del m64
    for prec in dict.fromkeys(("fp32", *cfg.precision.split(","))):
        backend = "compile" if cfg.backend == "triton" and prec == "fp32" else cfg.backend
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ran = resolve_backend(backend, prec, device, torch.float32)
            t, ours, peak = timed(lambda p=prec, b=backend: ablation_effects(
                model, x, target=classes, precision=p, backend=b, memory=cfg.memory),
                device, cfg.repeats)
        err = agreement(ours, truth)
        flops = ablation_flops(mcfg, cfg.n)
        name = f"ablation bilens {prec}"
        if ran[0] == "triton":
            name += " (Triton GEMMs, float16)" if ran[1] == "3xfp16" else " (Triton GEMMs)"
        fell_back = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
                     and str(w.message).startswith("bilens:")]
        if fell_back:                     # (on a CPU every row runs eager fp32: no label)
            name += " (fell back: see notes)" if device.type == "cuda" else ""
            cfg.notes.extend(dict.fromkeys(fell_back))
        row(name, t, agree=err, ok=err <= TOL, flops_per_s=flops / t, peak_bytes=peak)
        rows[name]["over_forward"] = t / t_fwd
    best = min((r for r in rows if r.startswith("ablation bilens") and rows[r]["ok"]),
               key=lambda r: rows[r]["seconds"], default=None)
    if best is None:
        raise BilensError("the fast ablation does not agree with float64 to 1e-5: no timing "
                          "counts (report this as a bug)")
    t_ours = rows[best]["seconds"]
    res["ablation_seconds"] = t_ours
    if cfg.captum:
        captum_ablation(znet, x[:2], classes[:2], max(cfg.ppe))                 # warm-up
        n_pick = min(cfg.n, cfg.ppe_inputs)
        pick = {p: timed(lambda p=p: captum_ablation(znet, x[:n_pick], classes[:n_pick], p),
                         device, 1, warmup=False) for p in cfg.ppe}
        ppe = min(pick, key=lambda p: pick[p][0])
        if n_pick == cfg.n:                       # the sweep ran on every input: keep its best
            t, cap, peak = pick[ppe]
        else:
            t, cap, peak = timed(lambda: captum_ablation(znet, x, classes, ppe), device, 1,
                                 warmup=False)
        err = agreement(cap, truth)
        row(f"captum LayerFeatureAblation ppe={ppe}", t, agree=err, peak_bytes=peak,
            ppe_tried={str(k): round(v[0], 4) for k, v in pick.items()})
        res["ablation_speedup_vs_captum"] = t / t_ours
    if cfg.loop:
        t, loop, peak = timed(lambda: hook_loop(znet, x, classes), device, 1, warmup=False)
        row("per-channel hook loop", t, agree=agreement(loop, truth), peak_bytes=peak)
        res["ablation_speedup_vs_loop"] = t / t_ours
    res["sizes"] = {"n_inputs": cfg.n, "n_layers": mcfg.n_layers, "d_model": mcfg.d_model,
                    "d_hidden": mcfg.d_hidden, "channels": mcfg.n_layers * mcfg.d_hidden}
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res["notes"] = cfg.notes
    summary(res, log)
    return res


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


def machine(device: torch.device) -> dict:
    """Where it ran."""
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        info["gpu"] = name
        info["peaks"] = next((v for k, v in PEAKS.items() if k in name), None)
    return info


def write_json(res: dict, path: str) -> None:
    """Write the results atomically (JSON)."""
    from bilens.core.io import write_json as _write
    _write(path, json.loads(json.dumps(res, default=str)))

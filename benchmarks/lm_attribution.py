"""Node attribution of the bilinear transformer against one forward pass: every mode, captum,
and the forward + backward floor, side by side in one run.

    python benchmarks/lm_attribution.py --threads 1                  # CPU, both configurations
    python benchmarks/lm_attribution.py --threads 1 --against main   # and the code of a git ref
    python benchmarks/lm_attribution.py --device cuda --configs issue --n 128 [--profile]
    python benchmarks/lm_attribution.py --device cuda --configs issue --n 1024 --memory 40GiB

Configurations (random weights, float32, pre-norm RMS, target `next` at the last position):

- `issue`: 4 layers, d_model 256, d_hidden 1024, 4 heads, 64 tokens, vocab 4096 (issue 14)
- `small`: 2 layers, d_model 64, d_hidden 128, 4 heads, 32 tokens, vocab 512

Every row is the median of `--repeats` calls after `--warmup`, the rows interleaved call by
call so that machine load hits them alike, and is printed as a ratio to `forward`
(`model(tokens)` under no_grad, the logits only):

- `forward, autograd graph`: the same forward with gradients enabled (the graph built);
- `forward + backward (floor)`: that forward with every `z` kept, then one backward of the
  target to every layer's `z`: the least that any gradient of every node costs;
- `attribute_sequence MODE`, and `attribute_sequence_modes` with all four modes;
- on CUDA with Triton, `renorm` and all four modes again with `backend="triton"`
  (`renorm`'s closed form as one kernel per layer, `attribution.triton_renorm`), and the
  forward and `renorm` (triton) each captured once as a CUDA graph and replayed
  (`attribution.captured`; each replay's result copied out, as a call returns a new one);
- with `--against REF`: the same calls of `attribution/sequence.py` and `renorm.py` as they
  are at git `REF` (read with `git show`, run on this checkout's model and core), checked
  against today's;
- captum's `LayerGradientXActivation` over the layers' `z`, called once per layer (the
  captum idiom for per-layer attributions) and once over all layers.
"""

# ruff: noqa: E741
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from lm_oracle import ZSeq

from bilens.attribution.captured import CapturedAttribution, capture
from bilens.attribution.sequence import (
    SEQUENCE_MODES,
    attribute_sequence,
    attribute_sequence_modes,
    batch_for,
)
from bilens.core.config import TransformerConfig
from bilens.core.device import triton_available
from bilens.core.memory import DEFAULT_MEMORY
from bilens.core.models.transformer import BilinearTransformer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "issue": dict(cfg=dict(vocab_size=4096, n_ctx=64, d_model=256, d_hidden=1024, n_layers=4,
                           n_heads=4), seq=64),
    "small": dict(cfg=dict(vocab_size=512, n_ctx=32, d_model=64, d_hidden=128, n_layers=2,
                           n_heads=4), seq=32),
}


def module_from_ref(ref: str, path: str, name: str, rename: dict[str, str] | None = None,
                    source: str | None = None):
    """The module at `path` as it is at git `ref` (or given as `source`), loaded as `name`
    (its imports rewritten by `rename`), on today's everything else."""
    if source is None:
        source = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    for old, new in (rename or {}).items():
        source = source.replace(old, new)
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                          # imports and dataclasses look there
    exec(compile(source, f"{ref}:{path}", "exec"), module.__dict__)
    return module


def module_at(ref: str):
    """`bilens.attribution.sequence` as it is at git `ref`, with `attribution/renorm.py` and
    `attribution/sequence_renorm.py` of `ref` too (under aliases, where `ref` has them), on
    today's model and core."""
    rename = {"bilens.attribution.renorm": f"renorm_at_{ref}"}
    module_from_ref(ref, "src/bilens/attribution/renorm.py", f"renorm_at_{ref}", rename)
    path = "src/bilens/attribution/sequence_renorm.py"
    if subprocess.run(["git", "cat-file", "-e", f"{ref}:{path}"], cwd=ROOT).returncode == 0:
        rename = {"bilens.attribution.sequence_renorm": f"sequence_renorm_at_{ref}", **rename}
        module_from_ref(ref, path, f"sequence_renorm_at_{ref}", rename)
    return module_from_ref(ref, "src/bilens/attribution/sequence.py", f"sequence_at_{ref}",
                           rename)


def forward_backward(model: BilinearTransformer, tokens: torch.Tensor, nxt: torch.Tensor):
    """The floor: `model.forward`'s own ops (SDPA attention, the head at the last position
    only) with every `z` kept, then `d log p(next) / d z` for every layer in one backward."""
    alpha, zs = model.config.attn_scale, []
    h = model.embed(tokens)
    for layer in model.layers:
        h = h + alpha * layer.attn.fast(layer.attn_norm(h)[0])
        left, right, z = layer.mlp(layer.mlp_norm(h)[0])
        zs.append(z)
        h = h + z @ layer.D.T
    logp = model.head(model.final_norm(h[:, -1])[0]).log_softmax(-1)
    return torch.autograd.grad(logp.gather(1, nxt[:, None]).sum(), zs)


def cases(model, data, old, captum: bool, memory: str, triton: bool = False) -> dict:
    """Every timed row: name -> a call with no arguments (the attribution's chunks bounded
    by `memory`; with `triton`, `renorm` also with `backend="triton"`)."""
    tokens, nxt = data[:, :-1], data[:, -1]
    mem = dict(memory=memory)
    out = {"forward": torch.no_grad()(lambda: model(tokens)),
           "forward, autograd graph": lambda: model(tokens).sum(),
           "forward + backward (floor)": lambda: forward_backward(model, tokens, nxt)}
    for label, mod in (("", None), ("@REF ", old)):
        if label and mod is None:
            continue
        one = attribute_sequence if mod is None else mod.attribute_sequence
        every = attribute_sequence_modes if mod is None else mod.attribute_sequence_modes
        for mode in SEQUENCE_MODES:
            out[f"{label}attribute {mode}"] = (
                lambda one=one, mode=mode: one(model, data, target="next", mode=mode, **mem))
        out[f"{label}attribute, all four modes"] = (
            lambda every=every: every(model, data, target="next", keep_run=False, **mem).predicted)
        if mod is None:           # today's two backwards, each where "auto" takes the other
            for mode in SEQUENCE_MODES:
                out[f"attribute {mode}, explicit"] = (lambda mode=mode: attribute_sequence(
                    model, data, target="next", mode=mode, method="explicit", **mem))
            out["attribute, all four modes, autograd"] = lambda: attribute_sequence_modes(
                model, data, target="next", keep_run=False, method="autograd", **mem).predicted
            if triton:            # renorm's closed form as one Triton kernel per layer
                out["attribute renorm, triton"] = lambda: attribute_sequence(
                    model, data, target="next", mode="renorm", backend="triton", **mem)
                out.update(graphed(model, data))
                out["attribute, all four modes, triton"] = lambda: attribute_sequence_modes(
                    model, data, target="next", keep_run=False, backend="triton",
                    **mem).predicted
    if captum:
        from captum.attr import LayerGradientXActivation

        znet = ZSeq(model, nxt)
        whole = LayerGradientXActivation(znet, list(znet.z))
        each = [LayerGradientXActivation(znet, z) for z in znet.z]
        out["captum, one call per layer"] = lambda: [g.attribute(tokens) for g in each]
        out["captum, one call, all layers"] = lambda: whole.attribute(tokens)
    return out


def graphed(model, data) -> dict:
    """The forward and `renorm` (triton), each captured once as a CUDA graph."""
    tokens = data[:, :-1]
    with torch.no_grad():
        graph, logits = capture(lambda: model(tokens, check=False), data.device, what="the forward")
    att = CapturedAttribution(model, data, target="next", mode="renorm", backend="triton")
    return {"forward, CUDA graph": lambda: (graph.replay(), logits.clone())[1],
            "attribute renorm, triton, CUDA graph": lambda: att(data)}


def measure(rows: dict, repeats: int, warmup: int, sync) -> tuple[dict, dict]:
    """Median seconds of every row, interleaved; and each row's last result."""
    times: dict[str, list[float]] = {k: [] for k in rows}
    last = {}
    for i in range(warmup + repeats):
        for key, fn in rows.items():
            sync()
            start = time.perf_counter()
            last[key] = fn()
            sync()
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, last


def agreement(last: dict, old) -> list[str]:
    """Today's modes against REF's, and captum against `live` (normwise relative)."""
    lines = []

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    if old is not None:
        diffs = [f"{m} {rel(last[f'attribute {m}'], last[f'@REF attribute {m}']):.1e}"
                 for m in SEQUENCE_MODES]
        lines.append("today vs REF, normwise: " + ", ".join(diffs))
    diffs = [f"{m} {rel(last[f'attribute {m}, explicit'], last[f'attribute {m}']):.1e}"
             for m in SEQUENCE_MODES if f"attribute {m}, explicit" in last]
    if diffs:
        lines.append("explicit vs autograd backward, normwise: " + ", ".join(diffs))
    if "attribute renorm, triton" in last:
        lines.append(f"renorm, backend triton vs eager, normwise: "
                     f"{rel(last['attribute renorm, triton'], last['attribute renorm']):.1e}")
        graph = last["attribute renorm, triton, CUDA graph"]
        lines.append(f"renorm triton, CUDA graph vs uncaptured, normwise: "
                     f"{rel(graph, last['attribute renorm, triton']):.1e}")
    if "captum, one call, all layers" in last:
        cap = torch.stack(last["captum, one call, all layers"], 1)
        lines.append(f"captum vs attribute live (sign flipped: b - z = -z): "
                     f"{rel(-cap, last['attribute live']):.1e}")
    return lines


def where_time_goes(rows: dict, sync) -> dict:
    """Per row, one call under `torch.profiler`: the kernels launched and the GPU's busy time
    (the sum of the kernels' own times) against the call's wall time; a call whose kernels
    keep the GPU busy for much less than its wall time is bound by the host launching them."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    print(f"\n{'where the time goes (one call)':40} {'wall ms':>9} {'GPU busy ms':>12} "
          f"{'kernels':>8}")
    for key, fn in rows.items():
        fn()
        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            fn()
            sync()
            wall = time.perf_counter() - start
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        busy = sum(e.device_time for e in kernels) / 1e6     # us -> s
        out[key] = {"wall_s": wall, "gpu_busy_s": busy, "kernels": len(kernels)}
        print(f"{key:40} {1e3 * wall:9.2f} {1e3 * busy:12.2f} {len(kernels):8d}")
    return out


def run_config(name: str, args, old) -> dict:
    spec = CONFIGS[name]
    cfg = TransformerConfig(**spec["cfg"])
    n, T, dev = args.n or (8 if args.device == "cpu" else 128), spec["seq"], args.device
    torch.manual_seed(0)
    model = BilinearTransformer(cfg).to(dev).eval()
    data = torch.randint(cfg.vocab_size, (n, T + 1), device=dev)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    triton = dev.startswith("cuda") and triton_available()
    rows = cases(model, data, old, not args.no_captum, args.memory, triton)
    chunk = batch_for(model, n, T, args.memory, all_logits=False)     # `next`: the head at p
    median, last = measure(rows, args.repeats, args.warmup, sync)
    base = median["forward"]
    print(f"\n{name}: {cfg.n_layers} layers, d_model {cfg.d_model}, d_hidden {cfg.d_hidden}, "
          f"{cfg.n_heads} heads, {T} tokens, vocab {cfg.vocab_size}, {n} sequences "
          f"({n * cfg.n_layers * T * cfg.d_hidden:,} nodes); median of {args.repeats}; "
          f"attribution in chunks of {chunk} sequences (--memory {args.memory})")
    print(f"{'':40} {'ms':>9} {'x forward':>10}")
    for key, t in median.items():
        print(f"{key.replace('@REF', '@' + str(args.against)):40} {1e3 * t:9.2f} "
              f"{t / base:10.2f}")
    if "forward, CUDA graph" in median:       # both captured: launches off the host
        both = median["attribute renorm, triton, CUDA graph"] / median["forward, CUDA graph"]
        print(f"renorm triton, CUDA graph, over the forward as a CUDA graph: {both:.2f}x")
    for line in agreement(last, old):
        print(line.replace("REF", str(args.against)))
    profiled = where_time_goes(rows, sync) if args.profile and dev.startswith("cuda") else None
    return {"n": n, "seq": T, "chunk": chunk, "median_s": median, "profile": profiled,
            "ratio_to_forward": {k: t / base for k, t in median.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="issue,small", help="comma-separated: issue, small")
    p.add_argument("--n", type=int, default=None, help="sequences (default 8 CPU, 128 GPU)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--memory", default=DEFAULT_MEMORY,
                   help=f"the attribution's chunk budget (default {DEFAULT_MEMORY}; one chunk "
                        "of 1,024 issue-shape sequences needs about 32GiB)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--against", default=None, help="also time this git ref's attribution")
    p.add_argument("--no-captum", action="store_true")
    p.add_argument("--out", default=None, help="also write the timings as JSON")
    p.add_argument("--profile", action="store_true",
                   help="on CUDA: also each row's kernels and GPU busy time (torch.profiler)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
    old = module_at(args.against) if args.against else None
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"float32")
    results = {name: run_config(name, args, old) for name in args.configs.split(",")}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": args.device, "threads": torch.get_num_threads(),
                       "against": args.against, "configs": results}, f, indent=2)


if __name__ == "__main__":
    main()

"""The fused attention-change kernel (`_engine/triton_attention.py`) at other launch shapes
and against other versions of itself, timed side by side on the node oracle's shapes.

    python benchmarks/attention_kernel.py                              # on CUDA
    python benchmarks/attention_kernel.py --launch 64x64x4,64x64x8,32x64x8
    python benchmarks/attention_kernel.py --variant .whl/ref/triton_attention_OLD.py

The shapes are those of one `(l, t)` batch of the H200 configuration (d_model 256, 4 heads of
64, 64 tokens; 32 sequences x 1,024 channels, as `--memory 80GiB` batches them at t = 0):
the layer right after the node's (`dq` at `t` alone), a later layer at t = 0 and at t = 32,
and the last layer (one query per sequence). Each launch shape (`BQxBJxwarps`) and each
variant (a module file with the same `attention_change`) is timed on the same inputs,
interleaved, medians of `--repeats` CUDA-event timings; its output is compared with the
first's (`max |diff|` over `max |out|`). Ratios are against the first row. (Session 9's run
read one key instead of 64 in the first case, `J = t + 1`: fixed since.)
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics

import torch

from bilens.ablation._engine import triton_attention as committed
from bilens.core.models.transformer import rope, rope_angles


def case(name: str, b: int, t: int, Sq: int, Sd: int, one_query: bool, K: int = 1024,
         nh: int = 4, dh: int = 64, T: int = 64, scale: float = 1e-2, seed: int = 0,
         device: str = "cuda"):
    """The kernel's arguments for one `(l, t)` batch: random clean `q, k, v` with their causal
    pattern, random changes of size `scale`."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape, s=1.0):
        return s * torch.randn(*shape, device=device, generator=g)

    cos, sin = rope_angles(T, dh, 10_000.0, torch.float32, torch.device(device))
    q, k, v = (rand(b, nh, T, dh) for _ in range(3))
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    pattern = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(~causal, -math.inf)
    pattern = pattern.softmax(-1)
    n = 1 if Sd == 1 else Sq
    dq = rand(b, K, n, nh, dh, s=scale)
    dk, dv = rand(b, K, Sd, nh, dh, s=scale), rand(b, K, Sd, nh, dh, s=scale)
    qpos = (torch.full((b, 1), T - 1, device=device) if one_query
            else torch.arange(t, t + Sq, device=device)[None])
    J = T if one_query else t + Sq            # keys 0..J-1: the plan's t + S, as the queries
    return name, (dq, dk, dv, q, k, v, pattern, cos, sin, qpos, t, J)


CASES = [  # name, sequences, t, query rows, changed keys, one query per sequence
    ("after the node's layer, t=0", 32, 0, 64, 1, False),
    ("later layer, t=0", 32, 0, 64, 64, False),
    ("later layer, t=32", 64, 32, 32, 32, False),
    ("last layer (one query), t=0", 32, 0, 1, 64, True),
]


def load(path: str):
    spec = importlib.util.spec_from_file_location(f"variant_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--launch", default="64x64x4,64x64x8,32x64x4,32x64x8,16x64x4",
                    help="launch shapes BQxBJxwarps for d_head 64, the committed one first")
    ap.add_argument("--variant", action="append", default=[],
                    help="a module file with `attention_change` (e.g. an earlier commit's "
                         "triton_attention.py), timed at its own launch shape")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--smoke", action="store_true",
                    help="under TRITON_INTERPRET=1 on the CPU, 2 sequences x 2 channels, once "
                         "(checks the script and the variants' outputs, times nothing real)")
    args = ap.parse_args()
    if args.smoke:
        smoke(args)
        return
    if not torch.cuda.is_available():
        raise SystemExit("attention_kernel: needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []                                         # (label, module, launch or None)
    for shape in args.launch.split(","):
        rows.append((f"launch {shape}", committed, tuple(int(x) for x in shape.split("x"))))
    rows += [(f"variant {p}", load(p), None) for p in args.variant]
    default = committed._LAUNCH[64]
    print(f"{torch.cuda.get_device_name()}: committed launch for d_head 64: "
          f"{'x'.join(map(str, default))}")
    for name, b, t, Sq, Sd, one in CASES:
        label, inputs = case(name, b, t, Sq, Sd, one)
        times, outs = {r[0]: [] for r in rows}, {}
        for rep in range(args.repeats + 1):                  # the first round warms up
            for tag, module, launch in rows:
                if launch is not None:
                    module._LAUNCH[64] = launch
                start, end = torch.cuda.Event(True), torch.cuda.Event(True)
                start.record()
                out, _ = module.attention_change(*inputs, amax=True)
                end.record()
                torch.cuda.synchronize()
                if rep:
                    times[tag].append(start.elapsed_time(end))
                else:
                    outs[tag] = out
                del out
        committed._LAUNCH[64] = default
        first = rows[0][0]
        ref = outs[first]
        print(f"\n{label}: {b} sequences x 1024 channels, {Sq} query rows, {Sd} changed keys")
        base = statistics.median(times[first])
        for tag, _, _ in rows:
            ms = statistics.median(times[tag])
            diff = ((outs[tag] - ref).abs().max() / ref.abs().max()).item()
            print(f"  {tag:40s} {ms:8.2f} ms  {base / ms:5.2f}x  (max diff {diff:.1e})")
        del outs, inputs
        torch.cuda.empty_cache()


def smoke(args) -> None:
    """Every variant against the committed kernel on tiny inputs, on the CPU."""
    variants = {p: load(p) for p in args.variant}
    for name, _, t, Sq, Sd, one in CASES:
        label, inputs = case(name, 2, t, Sq, Sd, one, K=2, device="cpu")
        ref, _ = committed.attention_change(*inputs, amax=True)
        for p, module in variants.items():
            out, _ = module.attention_change(*inputs, amax=True)
            diff = ((out - ref).abs().max() / ref.abs().max()).item()
            print(f"{label}: {p} max diff {diff:.1e}")


if __name__ == "__main__":
    main()

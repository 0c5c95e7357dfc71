"""Node attribution and the exact oracle of the bilinear transformer, timed side by side.

    python benchmarks/lm_oracle.py              # CPU: 2 layers, d_model 64, d_hidden 128, 32 tokens
    python benchmarks/lm_oracle.py --gpu        # 4 layers, d_model 256, d_hidden 1024, 64 tokens,
                                                # 128 sequences (the issue's H200 target)
    python benchmarks/lm_oracle.py --gpu --n 8  # a quick run

Random weights (float32), pre-norm RMS, target `next` at the last position. Rows:

1. attribution of every node (each mode, best of 10) against one forward pass (the best of
   10 before and 10 after) and against captum's
   `LayerGradientXActivation` over the layers' `z`;
2. the oracle (every node of every sequence) at each `--precision`, first checked against the
   float64 oracle (normwise relative error <= 1e-5) before any time counts; its FLOP count
   and FLOP/s;
3. on a subset (sequence 0, layer 0, the positions `--subset-every`): the oracle against
   captum's `LayerFeatureAblation` (best `perturbations_per_eval`), a per-node hook loop that
   reruns the network, and a plain prefix-reusing batched loop (layers < l and positions < t
   reused, all channels of one (l, t) per batch, recompute and subtract).

`bilens bench --kind transformer` measures the same rows from the CLI (with the comparison
code of `bilens.experiments.competitors_lm`, which this script uses too).
"""

# ruff: noqa: E741
from __future__ import annotations

import argparse
import math
import time

import torch

from bilens.ablation._engine.backend import resolve_backend
from bilens.ablation._engine.sequence_plan import SequencePlan
from bilens.ablation.sequence import ablate_prepared, sequence_ablation_effects
from bilens.attribution.sequence import SEQUENCE_MODES, attribute_sequence
from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.sequence import prepare_sequence
from bilens.experiments.competitors_lm import (
    ZSeq,
    captum_node_ablation,
    hook_loop,
    oracle_flops,
    prefix_loop,
)


def timed(fn, sync, repeat: int = 1, warm: bool = True):
    """Best wall time of `repeat` calls (after one warm-up unless `warm=False`), and the
    last result."""
    if warm:
        fn()
        sync()
    best, out = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def how(entry: str) -> tuple[str, str]:
    """`"3xtf32"` -> `("eager", "3xtf32")`, `"triton:3xfp16"` -> `("triton", "3xfp16")`."""
    backend, _, precision = entry.rpartition(":")
    return backend or "eager", precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="the H200 configuration on CUDA")
    ap.add_argument("--n", type=int, default=None, help="sequences (default 8 CPU, 128 GPU)")
    ap.add_argument("--subset-every", type=int, default=None,
                    help="subset positions: every k-th of layer 0 (default 1 CPU, 8 GPU)")
    ap.add_argument("--memory", default=None, help="oracle memory budget (default 1GiB/16GiB)")
    ap.add_argument("--no-captum", action="store_true")
    ap.add_argument("--precision", default="fp32",
                    help="the oracle's products: fp32, 3xtf32 (CUDA), triton:3xfp16, "
                         "triton:3xtf32 (CUDA and Triton), or a comma list")
    ap.add_argument("--repeat", type=int, default=1,
                    help="the whole oracle: best of this many calls (after a warm-up: the "
                         "float64 check's run)")
    ap.add_argument("--subset-repeat", type=int, default=5,
                    help="the subset's rows (bilens, the prefix-reusing loop): best of this "
                         "many calls after a warm-up (a GPU's subset is bound by the host, "
                         "which is noisy)")
    ap.add_argument("--no-hooks", action="store_true",
                    help="skip the per-node hook loop of the subset (half a minute on a GPU)")
    ap.add_argument("--no-full", action="store_true",
                    help="skip the every-node run (the check and the subset only)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: a shared 2-core machine thrashes with more)")
    ap.add_argument("--unfused-attention", action="store_true",
                    help="backend triton: the attention's change as torch ops, not the fused "
                         "kernel of _engine/triton_attention.py (to time one against the other)")
    ap.add_argument("--even-batches", action="store_true",
                    help="the timed oracle's (l, t) batches sized as if each carried every "
                         "position (`ablate_prepared(grow_batches=False)`)")
    args = ap.parse_args()
    if args.even_batches:
        print("oracle batches: every (l, t) sized as if it carried all positions")
    if args.unfused_attention:        # SequencePlan imports it per plan: None takes the torch path
        import bilens.ablation._engine.triton_attention as fused

        fused.attention_change = None
        print("triton backend: attention as torch ops (the fused kernel off)")
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.gpu else "cpu")
    if args.gpu:
        cfg = TransformerConfig(vocab_size=4096, n_ctx=64, d_model=256, d_hidden=1024,
                                n_layers=4, n_heads=4)
        n, T, every, memory = args.n or 128, 64, args.subset_every or 8, args.memory or "16GiB"
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        cfg = TransformerConfig(vocab_size=512, n_ctx=32, d_model=64, d_hidden=128,
                                n_layers=2, n_heads=4)
        n, T, every, memory = args.n or 8, 32, args.subset_every or 1, args.memory or "1GiB"
    sync = torch.cuda.synchronize if args.gpu else (lambda: None)
    torch.manual_seed(0)
    model = BilinearTransformer(cfg).to(dev).eval()
    data = torch.randint(cfg.vocab_size, (n, T + 1), device=dev)
    tokens = data[:, :-1]
    print(f"{dev.type}: {cfg.n_layers} layers, d_model {cfg.d_model}, d_hidden {cfg.d_hidden}, "
          f"{cfg.n_heads} heads, {T} tokens, {n} sequences, {n * cfg.n_layers * T * cfg.d_hidden:,}"
          f" nodes; target next at the last position; float32")

    # ---- 1. attribution
    t_before, _ = timed(lambda: model(tokens), sync, 10)
    modes = {mode: timed(lambda mode=mode: attribute_sequence(model, data, target="next",
                                                              mode=mode), sync, 10)
             for mode in SEQUENCE_MODES}
    t_fwd = min(t_before, timed(lambda: model(tokens), sync, 10)[0])  # before and after
    t_live, p_live = modes["live"]
    print(f"forward {t_fwd * 1e3:.1f} ms | attribution " + ", ".join(
        f"{mode} {t * 1e3:.1f} ms ({t / t_fwd:.1f}x)" for mode, (t, _) in modes.items())
          + " (best of 10 each)")
    znet = ZSeq(model, data[:, -1])
    if not args.no_captum:
        from captum.attr import LayerGradientXActivation

        gxa = LayerGradientXActivation(znet, list(znet.z))
        t_cap, attr = timed(lambda: gxa.attribute(tokens), sync, 3)
        err = (torch.stack(attr, 1) + p_live).norm() / p_live.norm()
        print(f"captum LayerGradientXActivation {t_cap * 1e3:.1f} ms: bilens live is "
              f"{t_cap / t_live:.1f}x faster (same numbers: rel. diff {err:.1e})")

    # ---- 2. the oracle at each precision, checked against float64 first
    check = slice(0, min(n, 2))
    start = time.perf_counter()
    a64 = sequence_ablation_effects(model.double(), data[check],
                                    target="next", memory=memory)
    print(f"float64 oracle, {len(range(n)[check])} sequences: {time.perf_counter() - start:.1f} s")
    model.float()
    _, run, tgt, b = prepare_sequence(model, data, "next", None, "zero", None, None)
    one = data[:1]
    _, run1, tgt1, b1 = prepare_sequence(model, one, "next", None, "zero", None, None)
    groups = [(0, t) for t in range(0, T, every)]
    subset = {}
    for prec in args.precision.split(","):
        backend, precision = resolve_backend(*how(prec), dev, model.dtype)  # what runs here
        start = time.perf_counter()
        a32 = sequence_ablation_effects(model, data[check], target="next", memory=memory,
                                        backend=backend, precision=precision)
        sync()
        first = time.perf_counter() - start                   # with the compiles, on CUDA
        err = ((a32.double() - a64).norm() / a64.norm()).item()
        print(f"oracle {prec} vs float64 (2 sequences): normwise rel. error {err:.2e} "
              f"({'ok' if err <= 1e-5 else 'ABOVE 1e-5'}; this first run {first:.1f} s)")
        if err > 1e-5:
            raise SystemExit(f"the oracle's {prec} effects disagree with float64; no timing")
        if not args.no_full:
            t_oracle, _ = timed(lambda backend=backend, precision=precision: ablate_prepared(
                model, run, tgt, b, frozen_norm=False, frozen_attn=False,
                layers=list(range(cfg.n_layers)), memory=memory, progress=False,
                backend=backend, precision=precision, grow_batches=not args.even_batches), sync,
                args.repeat, warm=False)                                  # warmed: the check
            flops = oracle_flops(cfg, n, T)
            per_node = t_oracle / (n * cfg.n_layers * T * cfg.d_hidden)
            print(f"oracle {prec}, every node: {t_oracle:.2f} s ({per_node * 1e9:.0f} ns/node), "
                  f"{flops:.3g} FLOP, {flops / t_oracle / 1e12:.3f} TFLOP/s")
        plan = SequencePlan(model, run1, tgt1, b1, precision=precision, backend=backend)
        subset[prec] = timed(lambda plan=plan: {g: plan.effects(*g, slice(0, 1), slice(None))[0]
                                                for g in groups}, sync, args.subset_repeat)

    # ---- 3. the subset: sequence 0, layer 0, positions every `every`
    nodes = len(groups) * cfg.d_hidden
    print(f"subset: sequence 0, layer 0, {len(groups)} positions = {nodes} nodes; bilens "
          + ", ".join(f"{p} {t * 1e3:.1f} ms" for p, (t, _) in subset.items()))
    t_pre, pre = timed(lambda: prefix_loop(model, run1, tgt1, b1, groups), sync,
                       args.subset_repeat)
    for prec, (t_ours, ours) in subset.items():
        diff = max((pre[g] - ours[g]).abs().max().item() for g in groups)
        scale = max(ours[g].abs().max().item() for g in groups)
        print(f"  prefix-reusing batched loop {t_pre * 1e3:.1f} ms: bilens {prec} "
              f"{t_pre / t_ours:.1f}x faster (max diff {diff / scale:.1e} of the largest effect)")
    t_ours = min(t for t, _ in subset.values())
    _hook_and_captum(znet, model, one, groups, t_ours, sync, args, cfg)


def _hook_and_captum(znet, model, one, groups, t_ours, sync, args, cfg):
    """The per-node hook loop and captum's LayerFeatureAblation on the subset (sequence
    `one`, its tokens without the label), as `bilens bench --kind transformer` runs them."""
    one, single = one[:, :-1], ZSeq(model, one[:, -1])
    if not args.no_hooks:
        t_hook, _ = timed(lambda: hook_loop(single, one, groups), sync, warm=False)
        print(f"  per-node hook loop {t_hook:.2f} s: bilens {t_hook / t_ours:.0f}x faster")
    if args.no_captum:
        return
    best = math.inf
    for ppe in (16, 64, 256, 1024):
        t_fa, _ = timed(lambda ppe=ppe: captum_node_ablation(single, one, groups, ppe), sync,
                        warm=False)
        best = min(best, t_fa)
        print(f"  captum LayerFeatureAblation ppe={ppe}: {t_fa:.2f} s")
    print(f"  captum best {best:.2f} s: bilens {best / t_ours:.0f}x faster")


if __name__ == "__main__":
    main()

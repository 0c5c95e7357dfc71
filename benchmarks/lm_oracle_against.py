"""The node oracle's per-position plan against the same plan at a git ref, side by side in one
run (interleaved calls, median), on the CPU or a GPU: `SequencePlan.effects` for every channel
of the layers and positions below, random weights, float32, target `next`.

    python benchmarks/lm_oracle_against.py --against HEAD --norm rms
    python benchmarks/lm_oracle_against.py --against HEAD --small      # 2 x 64 x 128, 32 tokens
    python benchmarks/lm_oracle_against.py --against HEAD --device cuda --precision 3xtf32
    python benchmarks/lm_oracle_against.py --against REF --device cuda \
        --precision triton:3xfp16 --ref-precision triton:3xfp16
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from lm_attribution import module_from_ref
from lm_oracle import how

from bilens.ablation._engine.sequence_plan import SequencePlan
from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.sequence import prepare_sequence


def plan_at(ref: str):
    """`SequencePlan` as it is at git `ref` (its module read with `git show`), or in the file
    `ref` (a copy of the module carried to a machine without the history)."""
    if Path(ref).is_file():
        module = module_from_ref(ref, "", f"sequence_plan_at_{Path(ref).stem}",
                                 source=Path(ref).read_text())
    else:
        module = module_from_ref(ref, "src/bilens/ablation/_engine/sequence_plan.py",
                                 f"sequence_plan_at_{ref}")
    return module.SequencePlan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", default="HEAD")
    ap.add_argument("--norm", default="rms")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="fp32",
                    help="today's products: fp32, 3xtf32, triton:3xfp16 or triton:3xtf32")
    ap.add_argument("--ref-precision", default="fp32",
                    help="the ref's products, as --precision (a ref from before session 7 "
                         "runs fp32 only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    shape = (dict(vocab_size=512, d_model=64, d_hidden=128, n_layers=2) if args.small else
             dict(vocab_size=4096, d_model=256, d_hidden=1024, n_layers=4))
    cfg = TransformerConfig(n_ctx=32, n_heads=4, norm=args.norm, **shape)
    torch.manual_seed(0)
    model = BilinearTransformer(cfg).to(args.device).eval()
    n = 2 if args.small else 1
    data = torch.randint(cfg.vocab_size, (n, 33), device=args.device)
    _, run, tgt, b = prepare_sequence(model, data, "next", None, "zero", None, None)
    backend, precision = how(args.precision)
    ref_backend, ref_precision = how(args.ref_precision)
    ref_how = ({} if (ref_backend, ref_precision) == ("eager", "fp32") else
               dict(precision=ref_precision, backend=ref_backend))
    plans = {"today": SequencePlan(model, run, tgt, b, precision=precision, backend=backend),
             args.against: plan_at(args.against)(model, run, tgt, b, **ref_how)}
    groups = [(l, t) for l in range(2) for t in range(0, 32, 1 if args.small else 8)]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def effects(plan):
        return [plan.effects(l, t, slice(0, n), slice(None)) for l, t in groups]

    got = {k: effects(p) for k, p in plans.items()}
    diff = max(((x - y).abs().max() / y.abs().max()).item()
               for x, y in zip(got["today"], got[args.against], strict=True))
    times: dict[str, list[float]] = {k: [] for k in plans}
    for _ in range(args.repeats):
        for key, plan in plans.items():
            sync()
            start = time.perf_counter()
            effects(plan)
            sync()
            times[key].append(time.perf_counter() - start)
    old, new = (statistics.median(times[k]) for k in (args.against, "today"))
    print(f"{args.norm}, today {args.precision}, ref {args.ref_precision}, {cfg.n_layers} "
          f"layers x d_model "
          f"{cfg.d_model} x d_hidden "
          f"{cfg.d_hidden}, 32 tokens, {n} sequence(s), layers 0-1 at {len(groups) // 2} "
          f"positions: {args.against} {1e3 * old:.1f} ms, today {1e3 * new:.1f} ms -> "
          f"{old / new:.2f}x (largest difference {diff:.1e} of the largest effect)")


if __name__ == "__main__":
    main()

"""Where the exact node oracle's time goes on a GPU: one profiled run of every node of a few
sequences at the issue's shape (random weights, float32, pre-norm RMS, target `next`).

    python benchmarks/lm_oracle_profile.py --n 2          # on CUDA (the H200 row of the docs)
    python benchmarks/lm_oracle_profile.py --n 2 --precision 3xtf32
    python benchmarks/lm_oracle_profile.py --subset 8 --precision triton:3xfp16

Prints the run's wall time, the GPU's busy time (the sum of its kernels' own times), the
number of kernels, and the operators that keep the GPU busy longest.
"""

from __future__ import annotations

import argparse
import time

import torch
from lm_oracle import how
from torch.profiler import ProfilerActivity, profile

from bilens.ablation._engine.backend import resolve_backend
from bilens.ablation._engine.sequence_plan import SequencePlan
from bilens.ablation.sequence import ablate_prepared
from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.sequence import prepare_sequence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2, help="sequences")
    ap.add_argument("--memory", default="16GiB")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--subset", type=int, default=0, metavar="EVERY",
                    help="profile lm_oracle.py's subset instead: sequence 0, layer 0, every "
                         "EVERY-th position, one `(0, t)` batch each")
    ap.add_argument("--sort", default="device",
                    help="tables to print, comma list: device (the kernels' own time), cpu "
                         "(the host's own time per operator: launches, syncs, dispatch)")
    ap.add_argument("--even-batches", action="store_true",
                    help="every (l, t) batch sized as if it carried all positions")
    ap.add_argument("--precision", default="fp32",
                    help="the oracle's products: fp32, 3xtf32, triton:3xfp16 or triton:3xtf32")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("lm_oracle_profile: needs CUDA (the profile is of the GPU's kernels)")
    torch.backends.cuda.matmul.allow_tf32 = False
    backend, precision = how(args.precision)
    cfg = TransformerConfig(vocab_size=4096, n_ctx=64, d_model=256, d_hidden=1024, n_layers=4,
                            n_heads=4)
    torch.manual_seed(0)
    model = BilinearTransformer(cfg).cuda().eval()
    data = torch.randint(cfg.vocab_size, (args.n, 65), device="cuda")
    _, run, tgt, b = prepare_sequence(model, data, "next", None, "zero", None, None)

    backend, precision = resolve_backend(backend, precision, torch.device("cuda"), model.dtype)
    plan = SequencePlan(model, run, tgt, b, precision=precision, backend=backend
                        ) if args.subset else None          # the subset's (0, t) batches

    def oracle():
        if args.subset:
            return [plan.effects(0, t, slice(0, 1), slice(None)) for t in range(0, 64, args.subset)]
        return ablate_prepared(model, run, tgt, b, frozen_norm=False, frozen_attn=False,
                               layers=list(range(cfg.n_layers)), memory=args.memory,
                               progress=False, backend=backend, precision=precision,
                               grow_batches=not args.even_batches)

    oracle()
    torch.cuda.synchronize()
    start = time.perf_counter()
    oracle()
    torch.cuda.synchronize()
    plain = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        oracle()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy = sum(e.device_time for e in kernels) / 1e6
    nodes = (len(range(0, 64, args.subset)) if args.subset else args.n * cfg.n_layers * 64
             ) * cfg.d_hidden
    what = f"subset every {args.subset}" if args.subset else f"{args.n} sequences"
    print(f"{args.precision}: {what}, {nodes:,} nodes: wall "
          f"{plain:.2f} s unprofiled; GPU busy {busy:.2f} s ({100 * busy / plain:.0f}% of the "
          f"wall), {len(kernels):,} kernels ({1e6 * plain / max(1, len(kernels)):.1f} us of "
          f"wall per kernel)")
    for key in args.sort.split(","):
        print(prof.key_averages().table(sort_by={"device": "self_device_time_total",
                                                 "cpu": "self_cpu_time_total"}[key],
                                        row_limit=args.top, max_name_column_width=60))


if __name__ == "__main__":
    main()

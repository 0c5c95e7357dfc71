"""Where the exact node oracle's time goes on a GPU: one profiled run of every node of a few
sequences at the issue's shape (random weights, float32, pre-norm RMS, target `next`).

    python benchmarks/lm_oracle_profile.py --n 2          # on CUDA (the H200 row of the docs)
    python benchmarks/lm_oracle_profile.py --n 2 --precision 3xtf32

Prints the run's wall time, the GPU's busy time (the sum of its kernels' own times), the
number of kernels, and the operators that keep the GPU busy longest.
"""

from __future__ import annotations

import argparse
import time

import torch
from lm_oracle import how
from torch.profiler import ProfilerActivity, profile

from bilens.ablation.sequence import ablate_prepared
from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.sequence import prepare_sequence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2, help="sequences")
    ap.add_argument("--memory", default="16GiB")
    ap.add_argument("--top", type=int, default=15)
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

    def oracle():
        return ablate_prepared(model, run, tgt, b, frozen_norm=False, frozen_attn=False,
                               layers=list(range(cfg.n_layers)), memory=args.memory,
                               progress=False, backend=backend, precision=precision)

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
    nodes = args.n * cfg.n_layers * 64 * cfg.d_hidden
    print(f"{args.precision}: {args.n} sequences, {nodes:,} nodes: wall "
          f"{plain:.2f} s unprofiled; GPU busy {busy:.2f} s ({100 * busy / plain:.0f}% of the "
          f"wall), {len(kernels):,} kernels ({1e6 * plain / max(1, len(kernels)):.1f} us of "
          f"wall per kernel)")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=args.top,
                                    max_name_column_width=60))


if __name__ == "__main__":
    main()

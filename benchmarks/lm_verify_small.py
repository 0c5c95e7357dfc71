"""`bilens.verify` on a small bilinear transformer trained here in seconds (CPU), for the
numbers of docs/lm-verification.md until `bilens train --kind transformer` lands.

    python benchmarks/lm_verify_small.py [--norm rms] [--position pre] [--steps 300] [--out DIR]

Task: 8 random tokens then the same 8 again (the second half is predictable by induction);
target `next` at the last position, 16 held-out sequences, float64.
"""

from __future__ import annotations

import argparse
import time

import torch

import bilens
from bilens import report
from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer


def batch(n: int, vocab: int, half: int, gen: torch.Generator) -> torch.Tensor:
    first = torch.randint(vocab, (n, half), generator=gen)
    return torch.cat([first, first], 1)                                  # [n, 2 * half]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--norm", default="rms")
    ap.add_argument("--position", default="pre")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = TransformerConfig(vocab_size=16, n_ctx=16, d_model=32, d_hidden=64, n_layers=2,
                            n_heads=4, norm=args.norm, norm_position=args.position)
    model = BilinearTransformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for _ in range(args.steps):
        x = batch(64, 16, 8, gen)
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1),
                                                 x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s, "
          f"loss {loss.item():.3f} nats (second half: induction)")
    model = model.double().eval()
    tokens = batch(16, 16, 8, torch.Generator().manual_seed(1))         # 15 read + next
    start = time.perf_counter()
    result = bilens.verify(model, tokens, target="next", progress=False)
    print(f"verify: {time.perf_counter() - start:.1f} s\n")
    print(report.verify_table(result))
    if args.out:
        report.save_verify(result, args.out)


if __name__ == "__main__":
    main()

"""What the node oracle's host does per batch, counted (no GPU needed): the torch operators
that reach a device kernel, and the Triton launches, in one `SequencePlan.effects` call of
the subset's kind (one sequence, one `(l, t)`, every channel), for the Triton backend run
under Triton's CPU interpreter (the same Python and the same torch calls as on a GPU) and for
the eager backend.

    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/lm_oracle_ops.py

On an H200 the subset is bound by its host (docs/lm-verification.md, session 11): each of
these operators costs the host a launch, so their count is what a change to the host's path
can be checked against on a CPU; its time only the GPU shows.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

import torch
from lm_oracle import how
from torch.utils._python_dispatch import TorchDispatchMode

from bilens.ablation._engine.sequence_plan import SequencePlan
from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.sequence import prepare_sequence

# operators that make no kernel of their own (views, metadata, host-side allocations)
NO_KERNEL = {"view", "_unsafe_view", "as_strided", "slice", "select", "unsqueeze", "squeeze",
             "expand", "permute", "transpose", "t", "reshape", "alias", "detach", "empty",
             "empty_like", "empty_strided", "split", "split_with_sizes", "chunk", "unbind",
             "lift_fresh", "sym_size", "sym_stride", "is_same_size"}


class CountOps(TorchDispatchMode):
    """Counts the aten operators dispatched, by name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


# what the interpreter itself does with torch tensors around each Triton launch (it moves
# them to numpy and back): not the plan's, and absent on a GPU
INTERPRETER = {"set_", "new_empty", "copy_"}


def count(plan: SequencePlan, l: int, t: int) -> tuple[Counter, int]:
    """The kernel-making torch operators (the interpreter's own left out) and the Triton
    launches of one `effects` call."""
    from triton.runtime.interpreter import InterpretedFunction

    launches = [0]
    run = InterpretedFunction.run

    def counted(self, *args, **kwargs):
        launches[0] += 1
        return run(self, *args, **kwargs)

    InterpretedFunction.run = counted
    try:
        with CountOps() as mode:
            plan.effects(l, t, slice(0, 1), slice(None))
    finally:
        InterpretedFunction.run = run
    skip = NO_KERNEL | (INTERPRETER if plan.triton is not None else set())
    return Counter({k: v for k, v in mode.ops.items() if k not in skip}), launches[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--backends", default="triton:3xfp16,eager:fp32")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("lm_oracle_ops: set TRITON_INTERPRET=1 (the Triton backend on a CPU)")
    cfg = TransformerConfig(vocab_size=64, n_ctx=args.seq, d_model=32, d_hidden=48,
                            n_layers=args.layers, n_heads=2)
    torch.manual_seed(0)
    model = BilinearTransformer(cfg).eval()
    data = torch.randint(cfg.vocab_size, (1, args.seq + 1))
    _, run, tgt, b = prepare_sequence(model, data, "next", None, "zero", None, None)
    print(f"{args.layers} layers, {args.seq} tokens, sequence 0, layer 0, every channel; "
          "per effects() call, after one warm-up call")
    for entry in args.backends.split(","):
        backend, precision = how(entry)
        plan = SequencePlan(model, run, tgt, b, precision=precision, backend=backend)
        for t in (0, args.seq // 2):
            plan.effects(0, t, slice(0, 1), slice(None))                    # compiles
            ops, launches = count(plan, 0, t)
            print(f"{entry} t={t}: {sum(ops.values())} torch operators, {launches} Triton "
                  f"launches; {', '.join(f'{k} {v}' for k, v in ops.most_common())}")


if __name__ == "__main__":
    main()

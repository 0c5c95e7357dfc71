"""The peak memory of one attribution chunk at the issue's shape, against the estimate
`bilens.attribution.sequence.batch_for` budgets with: the bytes of live tensor storages,
counted op by op under a `TorchDispatchMode` (CPU, float32, random weights).

    python benchmarks/lm_attribution_memory.py [--n 8]
"""

from __future__ import annotations

import argparse
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bilens.attribution.sequence import attribute_sequence_modes
from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer


class LiveBytes(TorchDispatchMode):
    """The bytes of the storages the ops create, while they live, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key, n = st.data_ptr(), st.nbytes()
                if n and key not in self.seen:
                    self.seen.add(key)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self._free, key, n)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    cfg = TransformerConfig(vocab_size=4096, n_ctx=64, d_model=256, d_hidden=1024, n_layers=4,
                            n_heads=4)
    torch.manual_seed(0)
    model = BilinearTransformer(cfg).eval()
    data = torch.randint(cfg.vocab_size, (args.n, 65))
    per_pos = cfg.n_layers * (12 * cfg.d_model + 6 * cfg.d_hidden + 3 * cfg.n_heads * 64)
    for target, modes, keep in (("next", ("frozen",), False), ("next", ("live", "renorm"), False),
                                ("next", ("live", "renorm"), True),
                                ("mean-logprob", ("live", "renorm"), False)):
        every = target == "mean-logprob" or keep
        estimate = 3 * (64 * per_pos + 3 * cfg.vocab_size * (64 if every else 1)) * 4
        with LiveBytes() as mode:
            result = attribute_sequence_modes(model, data, target=target, modes=modes,
                                              keep_run=keep)
        del result
        print(f"{target:12} {'+'.join(modes):12} keep_run={keep!s:5}  peak "
              f"{mode.peak / 1e6 / args.n:5.1f} MB a sequence; estimate "
              f"{estimate / 1e6:5.1f} MB")


if __name__ == "__main__":
    main()

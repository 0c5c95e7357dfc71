"""`bilens` under torchrun with a failure injected on one rank (tests/test_distributed.py):

    torchrun --nproc-per-node 2 tests/distributed_worker.py verify ...

The rank named by `BILENS_TEST_FAIL_RANK` raises in its first ablation chunk.
"""

import os
import sys

from bilens.ablation._engine.plan import Plan
from bilens.cli import main

if os.environ.get("RANK") == os.environ.get("BILENS_TEST_FAIL_RANK"):
    def _fail(*args, **kwargs):
        raise RuntimeError(f"injected failure on rank {os.environ['RANK']}")

    Plan.effects = _fail

sys.exit(main())

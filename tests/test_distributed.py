"""Distributed runs on the CPU: two gloo processes must give the one-process result.

- `ablation_effects` split over two ranks equals one process: exactly in float64, to 1e-6
  in float32, on every rank; so does the transformer's node oracle (float64, exactly);
- `torchrun --nproc-per-node 2 -m bilens verify` writes the tensors of a one-process run and
  records `world_size` and the split in `metrics.json`;
- a rank that fails ends the run: non-zero exit, one line naming the rank, no output.

Each launch costs a few seconds of process start-up (torch's import), so the checks of one
kind share one launch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from bilens.ablation import ablation_effects, ablation_split
from bilens.cli import main
from bilens.core import distributed
from bilens.core.distributed import RankFailed, assign_lpt

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
CASES = [("rms", "post", torch.float64), ("layer", "pre", torch.float64),
         ("none", "post", torch.float64), ("rms", "pre", torch.float32),
         ("layer", "post", torch.float32)]
MEMORY = 16 * 2**10          # small chunks: many jobs of uneven cost across the layers


def _problem(norm: str, position: str, dtype: torch.dtype):
    from conftest import tiny_model

    model = tiny_model(norm, position, seed=3, dtype=dtype, d_hidden=24, n_layers=4)
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return model, x


def _effects(model, x, case: int) -> torch.Tensor:
    kw = {"channels": [0, 3, 5, 7, 11, 20]} if case == 2 else {}
    return ablation_effects(model, x, memory=MEMORY, frozen_norm=case == 4, **kw)


def _sequence_effects(features: bool = False) -> torch.Tensor:
    """The transformer's node oracle (or, with `features`, its feature ablation) on a small
    float64 model, in many small batches (one channel-chunk per batch), so that the ranks
    get batches of very uneven cost."""
    from bilens.ablation import feature_ablation_effects, sequence_ablation_effects
    from bilens.core.config import TransformerConfig
    from bilens.core.models.transformer import BilinearTransformer

    torch.manual_seed(5)
    model = BilinearTransformer(TransformerConfig(vocab_size=23, n_ctx=8, d_model=8,
                                                  d_hidden=12, n_layers=3, n_heads=2,
                                                  norm="layer")).double().eval()
    tokens = torch.randint(23, (3, 7), generator=torch.Generator().manual_seed(6))
    oracle = feature_ablation_effects if features else sequence_ablation_effects
    return oracle(model, tokens, target="next", memory=20 * 2**10)


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    sys.path.insert(0, str(TESTS))
    assert distributed.init_if_launched().active
    try:
        got = {}
        for i, case in enumerate(CASES):
            got[str(i)] = _effects(*_problem(*case), i)
        got["sequence"] = _sequence_effects()
        got["features"] = _sequence_effects(features=True)
        split = ablation_split(_problem(*CASES[0])[0], 40, memory=MEMORY)
        torch.save({"effects": got, "split": split}, Path(outdir) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_assign_lpt_is_balanced_and_complete():
    costs = [4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1, 1]                   # 4 layers x 3 chunks
    shares = assign_lpt(costs, 3)
    assert sorted(j for s in shares for j in s) == list(range(len(costs)))
    assert [sum(costs[j] for j in s) for s in shares] == [10, 10, 10]
    assert assign_lpt(costs, 3) == shares                         # deterministic
    assert assign_lpt([5.0], 3) == [[0], [], []]


def test_one_process_world_and_agree():
    w = distributed.world()
    assert (w.rank, w.world_size, w.active, w.is_main) == (0, 1, False, True)
    distributed.agree()                                           # no-op
    with pytest.raises(ValueError, match="boom"):
        distributed.agree(ValueError("boom"))
    msg = str(RankFailed({1: "RuntimeError: x"}, usage=False, world_size=2))
    assert msg == "rank 1 failed: RuntimeError: x"


def test_sharded_ablation_equals_one_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for i, case in enumerate(CASES):
        one = _effects(*_problem(*case), i)
        for r in ranks:
            got = r["effects"][str(i)]
            if case[2] == torch.float64:            # same chunks, same products: exact
                assert torch.equal(got.nan_to_num(123.0), one.nan_to_num(123.0)), case
            else:
                torch.testing.assert_close(got, one, rtol=1e-6, atol=0, equal_nan=True)
    one = _sequence_effects()                       # the transformer's node oracle, float64
    assert one.isfinite().all() and one.abs().max() > 0
    features = _sequence_effects(features=True)
    assert features.isfinite().all() and features.abs().max() > 0
    for r in ranks:
        assert torch.equal(r["effects"]["sequence"], one)
        assert torch.equal(r["effects"]["features"], features)
    split = ranks[0]["split"]
    assert split["world_size"] == 2 and sum(split["jobs_per_rank"]) == split["jobs"]
    assert split["jobs"] > 8 and split["balance"] > 0.9


def _torchrun(*args: str, script: str = "-m bilens", timeout: float = 120,
              **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",   # = torchrun
           "--nproc-per-node", "2", *script.split(), "--", *args]    # `--`: --n is not torchrun's
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
            "OMP_NUM_THREADS": "1", "BILENS_DIST_TIMEOUT_S": "60", **env}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full)


def _verify_args(ckpt: str, out: Path) -> list[str]:
    return ["verify", ckpt, "--dataset", "synthetic", "--n", "24", "--modes", "frozen,live",
            "--circuit-ks", "1,4", "--memory", "64KiB", "--float64", "--no-plots",
            "--no-progress", "--out", str(out)]


def test_torchrun_verify_writes_the_one_process_result(synthetic_checkpoint, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_verify_args(synthetic_checkpoint, one)) == 0
    proc = _torchrun(*_verify_args(synthetic_checkpoint, two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1                        # rank 0 alone prints
    a, b = load_file(one / "results.safetensors"), load_file(two / "results.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name].nan_to_num(123.0), b[name].nan_to_num(123.0)), name
    info1 = json.loads((one / "metrics.json").read_text())["info"]
    info2 = json.loads((two / "metrics.json").read_text())["info"]
    assert info1["world_size"] == 1 and info1["distributed"]["jobs_per_rank"] == \
        [info1["distributed"]["jobs"]]
    split = info2["distributed"]
    assert info2["world_size"] == 2 and len(split["jobs_per_rank"]) == 2
    assert sum(split["jobs_per_rank"]) == split["jobs"] == info1["distributed"]["jobs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]   # no temporaries


def test_a_failing_rank_ends_the_run_without_output(synthetic_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = _torchrun(*_verify_args(synthetic_checkpoint, out),
                     script=str(TESTS / "distributed_worker.py"), BILENS_TEST_FAIL_RANK="1")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("bilens verify: error")]
    assert lines == ["bilens verify: error: rank 1 failed: RuntimeError: injected failure "
                     "on rank 1; no output was written"], proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []                         # nothing, not even a temp

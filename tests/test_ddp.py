"""DDP training of the bilinear transformer on the CPU (docs/distributed.md): two gloo
processes must train the one-process model.

- one step's gradient under DDP (the slices' weighted losses) equals the one-process gradient
  of the global batch's mean loss to 1e-12 (float64);
- `_loop` under a process group of two ranks (float64, an uneven split of the global batch
  of 7 rows, gradient clipping on) ends with the one-process parameters to 1e-10, on both
  ranks;
- `torchrun --nproc-per-node 2 -m bilens train --kind transformer` writes one checkpoint, from
  rank 0, equal to a one-process run's (float32, 1e-5 relative), with `world_size` recorded;
- MLP training refuses to start under torchrun, in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_distributed import _free_port, _torchrun

from bilens.cli import main
from bilens.core import distributed
from bilens.core.config import TransformerConfig
from bilens.core.models.transformer import BilinearTransformer
from bilens.core.synthetic_lm import synthetic_lm
from bilens.training.lm import LMTrainConfig, _loop, _loss

TC = LMTrainConfig(steps=5, batch_size=7, lr=3e-2, grad_clip=0.5, seed=2, device="cpu")


def _model() -> BilinearTransformer:
    torch.manual_seed(5)
    cfg = TransformerConfig(vocab_size=64, n_ctx=32, d_model=16, d_hidden=16, n_layers=2,
                            n_heads=2, norm="layer", norm_position="pre")
    return BilinearTransformer(cfg).double().train()


def _train_float64() -> dict[str, torch.Tensor]:
    """The loop on a float64 model; DDP when a process group is active."""
    data = synthetic_lm(32, seed=0, n_train=64, n_test=8)
    model = _model()
    _loop(model, TC, data, 32, torch.device("cpu"), progress=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _gradient() -> dict[str, torch.Tensor]:
    """One step's gradient (AdamW hides a scale error, so the weighting is checked here)."""
    rows = synthetic_lm(32, seed=0, n_train=64, n_test=8).train[:7]
    model, w = _model(), distributed.world()
    net = torch.nn.parallel.DistributedDataParallel(model) if w.active else model
    part = torch.tensor_split(rows, w.world_size)[w.rank]
    _loss(net(part[:, :-1]), part[:, 1:], rows[:, 1:].numel(), w).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.init_if_launched().active
    try:
        torch.save({"params": _train_float64(), "grad": _gradient()},
                   Path(outdir) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float(((a[k] - b[k]).abs() / b[k].abs().clamp_min(1e-3)).max()) for k in a)


def test_ddp_loop_equals_one_process_float64(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    one, grad = _train_float64(), _gradient()
    saved = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in saved:
        g = max(float((r["grad"][k] - grad[k]).abs().max()) for k in grad)
        print(f"DDP vs one process gradient, float64: max |diff| = {g:.3e}")
        assert g <= 1e-12
    ranks = [r["params"] for r in saved]
    for got in ranks:
        diff = max(float((got[k] - one[k]).abs().max()) for k in one)
        print(f"DDP vs one process, float64: max |diff| = {diff:.3e}, "
              f"max relative {_max_rel_diff(got, one):.3e}")
        assert diff <= 1e-10
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in one)     # DDP keeps ranks equal
    start = _model().state_dict()
    assert max(float((one[k] - start[k]).abs().max()) for k in one) > 1e-3    # it trained


def _train_args(out: Path) -> list[str]:
    return ["train", "--kind", "transformer", "--dataset", "synthetic-lm", "--seq-len", "32",
            "--steps", "5", "--batch-size", "6", "--d-model", "16", "--d-hidden", "16",
            "--layers", "2", "--heads", "2", "--seed", "1", "--device", "cpu",
            "--no-progress", "--out", str(out)]


def test_torchrun_train_writes_one_checkpoint_from_rank_0(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    torch.set_num_threads(1)
    assert main(_train_args(one)) == 0
    proc = _torchrun(*_train_args(two), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("checkpoint: ") == 1                      # rank 0 alone prints
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    rel = _max_rel_diff(b, a)
    print(f"torchrun train vs one process, float32: max relative diff = {rel:.3e}")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    meta1 = json.loads((one / "config.json").read_text())
    meta2 = json.loads((two / "config.json").read_text())
    assert (meta1["world_size"], meta2["world_size"]) == (1, 2)
    assert meta2["val_loss"] == meta1["val_loss"] or abs(meta2["val_loss"] -
                                                         meta1["val_loss"]) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]   # no temporaries


def test_mlp_training_refuses_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--dataset", "synthetic", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bilens train: error: train --kind mlp runs as one process; under torchrun "
                   "only --kind transformer trains with DDP (run `python -m bilens train ...` "
                   "instead)"]
    assert not (tmp_path / "x").exists()

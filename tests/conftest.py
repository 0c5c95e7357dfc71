"""Shared fixtures: tiny models of every norm x position, and small trained checkpoints."""

from __future__ import annotations

import pytest
import torch

from bilens.core.config import ModelConfig
from bilens.core.models.mlp import BilinearNet

# One thread: the tests' matrices are tiny, and on a shared 2-core machine torch's default
# of one thread per core thrashes (measured here: test_train.py 8 s -> 105 s under load).
torch.set_num_threads(1)

NORMS = ("none", "rms", "layer")
POSITIONS = ("post", "pre")
CASES = [(n, p) for n in NORMS for p in POSITIONS]


def randomize_norms(model, gen: torch.Generator, dtype: torch.dtype):
    """Non-trivial norm gains (1 + U[0, 0.5)) and LayerNorm biases (0.3 N(0, 1)), so a test
    that ignored gamma or beta would fail; returns the model in eval mode."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.rand(p.shape, generator=gen, dtype=dtype))
            elif name.endswith("norm.bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=dtype))
    return model.eval()


def tiny_model(norm: str = "rms", position: str = "post", seed: int = 0,
               dtype: torch.dtype = torch.float64, **sizes: int) -> BilinearNet:
    """A small random network with non-trivial norm gains and biases (so a test that
    ignored gamma or beta would fail)."""
    shape = {"d_in": 5, "d_model": 6, "d_hidden": 7, "n_layers": 3, "n_out": 4, **sizes}
    cfg = ModelConfig(**shape, norm=norm, norm_position=position)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BilinearNet(cfg).to(dtype)
    return randomize_norms(model, gen, dtype)


@pytest.fixture
def make_model():
    """`make_model(norm, position, seed, dtype, **sizes)` -> a tiny float64 BilinearNet."""
    return tiny_model


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory) -> str:
    """A checkpoint trained for a few seconds on the synthetic task, with metadata."""
    from bilens.core.checkpoint import save
    from bilens.training.train import TrainConfig, train

    cfg = ModelConfig(d_in=16, d_model=16, d_hidden=32, n_layers=2, n_out=4)
    result = train(cfg, TrainConfig(epochs=2, seed=0, device="cpu"), "synthetic", progress=False)
    out = tmp_path_factory.mktemp("ckpt") / "synthetic"
    save(result.model, out, result.metadata)
    return str(out)

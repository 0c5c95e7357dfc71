"""Training: AdamW with a cosine schedule, optional input noise, weight decay and an L1
penalty on the hidden activations `z`, seeded and deterministic on CPU.

    loss = cross_entropy(logits, y) + l1 * mean |z|        (mean over batch, layers, channels)

Sparsity is measured by `active_fraction`: channel `(l, k)` is **active** on input `x` when
its write to the residual, `c_{l,k}(x) = |z_{l,k}(x)| * ||D_l[:, k]||`, exceeds `threshold`
(default 0.1) times the largest write of that layer on that input, `max_j c_{l,j}(x)`.
Measuring the write rather than `|z|` makes the count blind to the rescaling `z -> a z`,
`D -> D / a` that leaves the network unchanged. The fraction is averaged over inputs,
layers and channels.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from bilens.core.config import ModelConfig
from bilens.core.data import Dataset, load_dataset
from bilens.core.device import resolve_device
from bilens.core.errors import BilensError, check_fields, check_inputs
from bilens.core.models.mlp import BilinearNet


@dataclass
class TrainConfig:
    """How to train.

    Args:
        epochs: passes over the training set.
        batch_size: examples per step.
        lr: peak learning rate (reached after the warmup, then cosine to 0).
        weight_decay: AdamW decoupled weight decay on the matrices E, L, R, D, W (never
            on the norms' gain and bias).
        input_noise: std of Gaussian noise added to each (standardized) training input.
        l1: weight of the penalty `mean |z|` on the hidden activations.
        grad_clip: clip the global gradient norm to this (0 turns clipping off).
        warmup: fraction of the steps spent ramping the learning rate up linearly.
        seed: seeds the initialization, the shuffling and the noise.
        device: `"auto"` (CUDA when available, else CPU), `"cpu"`, `"cuda"`, `"cuda:1"`, ...
        eval_batch_size: batch size for evaluation (memory only, no effect on results).
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    input_noise: float = 0.0
    l1: float = 0.0
    grad_clip: float = 1.0
    warmup: float = 0.05
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 4096

    def __post_init__(self) -> None:
        check_fields(self, "train", positive=("epochs", "batch_size", "eval_batch_size"),
                     nonnegative=("lr", "weight_decay", "input_noise", "l1",
                                  "grad_clip"), fractions=("warmup",))


@dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained network, in eval mode, on the training device.
        test_accuracy: fraction of the test split classified correctly.
        train_accuracy: the same on the (noise-free) training split.
        active_fraction: `active_fraction(model, test inputs)`.
        wall_time: seconds spent training and evaluating.
        history: one dict per epoch (loss, accuracy, lr, test accuracy, seconds).
        metadata: everything `config.json` records beside the model config.
    """

    model: BilinearNet
    test_accuracy: float
    train_accuracy: float
    active_fraction: float
    wall_time: float
    history: list[dict[str, float]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def accuracy(model: BilinearNet, x: Float[Tensor, "n d_in"], y: Int[Tensor, " n"],
             batch_size: int = 4096) -> float:
    """Fraction of `x` whose arg-max logit equals `y`.

    Args:
        model: the network.
        x: inputs `[N, d_in]`.
        y: labels `[N]`.
        batch_size: evaluation batch size (memory only).

    Returns:
        Accuracy in [0, 1].
    """
    check_inputs(x, model.config.d_in)
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(model.device, model.dtype)
        correct += int((model(xb).argmax(-1) == y[i:i + batch_size].to(model.device)).sum())
    return correct / x.shape[0]


@torch.no_grad()
def active_fraction(model: BilinearNet, x: Float[Tensor, "n d_in"], threshold: float = 0.1,
                    batch_size: int = 4096) -> float:
    """Fraction of channels active on `x` (see the module docstring for the definition).

    Args:
        model: the network.
        x: inputs `[N, d_in]`.
        threshold: a channel is active when its write `|z| * ||D[:, k]||` exceeds
            `threshold` times the largest write in its layer on the same input.
        batch_size: evaluation batch size (memory only).

    Returns:
        The fraction in [0, 1], averaged over inputs, layers and channels.
    """
    check_inputs(x, model.config.d_in)
    d_norms = torch.stack([layer.D.norm(dim=0) for layer in model.layers])     # [layer, H]
    active = 0
    for i in range(0, x.shape[0], batch_size):
        z = model.run(x[i:i + batch_size].to(model.device, model.dtype)).z    # [B, layer, H]
        write = z.abs() * d_norms                                             # [B, layer, H]
        top = write.amax(dim=-1, keepdim=True)                                # [B, layer, 1]
        active += int((write > threshold * top).sum())
    return active / (x.shape[0] * model.config.n_layers * model.config.d_hidden)


def _check_sizes(model_config: ModelConfig, *splits: Dataset) -> None:
    for split in splits:
        if split.y is None:
            raise BilensError(f"dataset: {split.name!r} ({split.split}) has no labels (no "
                              f"array 'y'); training needs y [N] beside x [N, d_in]")
        if (model_config.d_in, model_config.n_out) != (split.d_in, split.n_classes):
            raise BilensError(f"model_config: d_in={model_config.d_in}, "
                              f"n_out={model_config.n_out} but dataset {split.name!r} "
                              f"({split.split}) has d_in={split.d_in}, {split.n_classes} "
                              f"classes; build the config from the dataset")


def _step(model: BilinearNet, xb: Tensor, yb: Tensor, tc: TrainConfig,
          optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler
          ) -> tuple[Tensor, float]:
    """One optimizer step on a batch; returns the logits and the loss."""
    out = model.run(xb, check=False)
    loss = F.cross_entropy(out.logits, yb)
    if tc.l1 > 0:
        loss = loss + tc.l1 * out.z.abs().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    optimizer.step()
    schedule.step()
    return out.logits.detach(), loss.item()


def train(model_config: ModelConfig, train_config: TrainConfig | None = None,
          dataset: str | tuple[Dataset, Dataset] = "digits", progress: bool = True) -> TrainResult:
    """Train a `BilinearNet` and evaluate it.

    Args:
        model_config: the network; `d_in` and `n_out` must match the dataset.
        train_config: the optimization (defaults: `TrainConfig()`).
        dataset: a name from `bilens.core.data.DATASETS`, or a `(train, test)` pair of Datasets.
        progress: show a tqdm bar with the loss and running accuracy.

    Returns:
        A `TrainResult`.

    Example:
        >>> cfg = ModelConfig(d_in=64, d_model=64, d_hidden=128, n_layers=3, n_out=10)
        >>> result = train(cfg, TrainConfig(epochs=2), "digits", progress=False)
        >>> 0 <= result.test_accuracy <= 1
        True
    """
    tc = train_config or TrainConfig()
    train_set, test_set = ((load_dataset(dataset, "train"), load_dataset(dataset, "test"))
                           if isinstance(dataset, str) else dataset)
    _check_sizes(model_config, train_set, test_set)
    device = resolve_device(tc.device)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        model = BilinearNet(model_config)
    model.to(device).train()
    x, y = train_set.x.to(device), train_set.y.to(device)
    check_inputs(x, model_config.d_in, "train inputs")

    optimizer = _optimizer(model, tc)
    steps_per_epoch = math.ceil(len(y) / tc.batch_size)
    total = tc.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(total, tc.warmup))
    shuffle = torch.Generator().manual_seed(tc.seed)
    noise = torch.Generator(device=device).manual_seed(tc.seed + 1)
    history: list[dict[str, float]] = []
    bar = _progress(total, progress)
    step = 0
    # closed before any exception leaves (Ctrl-C included): the bar ends on its own line
    # and is not drawn again, by tqdm's own close, after the CLI's message
    with contextlib.closing(bar):
        for epoch in range(tc.epochs):
            t_epoch, loss_sum, correct = time.perf_counter(), 0.0, 0
            for idx in torch.randperm(len(y), generator=shuffle).split(tc.batch_size):
                idx = idx.to(device)
                xb, yb = x[idx], y[idx]
                if tc.input_noise > 0:
                    xb = xb + tc.input_noise * torch.randn(xb.shape, generator=noise,
                                                           device=device)
                logits, loss_value = _step(model, xb, yb, tc, optimizer, schedule)
                step += 1
                if not math.isfinite(loss_value):
                    raise BilensError(f"training diverged at epoch {epoch + 1}, step {step} "
                                      f"(loss {loss_value}); lower --lr, keep --grad-clip > 0, "
                                      f"or use a norm")
                loss_sum += loss_value * len(idx)
                correct += int((logits.argmax(-1) == yb).sum())
                bar.update(1)
                if step % 10 == 0:
                    seen = min(len(y), (step - epoch * steps_per_epoch) * tc.batch_size)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.4f}",
                                    acc=f"{correct / seen:.4f}")
            model.eval()
            test_acc = accuracy(model, test_set.x, test_set.y, tc.eval_batch_size)
            model.train()
            history.append({"epoch": epoch + 1, "loss": loss_sum / len(y),
                            "train_accuracy_running": correct / len(y),
                            "test_accuracy": test_acc, "lr": schedule.get_last_lr()[0],
                            "seconds": time.perf_counter() - t_epoch})
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / len(y):.4f}",
                            test=f"{test_acc:.4f}")
    return _result(model, train_set, test_set, tc, device, history, time.perf_counter() - start)


def _result(model: BilinearNet, train_set: Dataset, test_set: Dataset, tc: TrainConfig,
            device: torch.device, history: list[dict[str, float]], wall: float) -> TrainResult:
    """The trained model evaluated: accuracies, active fraction, metadata."""
    model.eval()
    test_acc = accuracy(model, test_set.x, test_set.y, tc.eval_batch_size)
    train_acc = accuracy(model, train_set.x, train_set.y, tc.eval_batch_size)
    active = active_fraction(model, test_set.x, batch_size=tc.eval_batch_size)
    metadata = _metadata(train_set, test_set, tc, device, test_acc, train_acc, active, wall,
                         history)
    model.metadata = metadata  # as on a model from bilens.load
    return TrainResult(model=model, test_accuracy=test_acc, train_accuracy=train_acc,
                       active_fraction=active, wall_time=wall, history=history,
                       metadata=metadata)


def _optimizer(model: BilinearNet, tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on the matrices only (norm gains and biases are 1-d)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    keep = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=tc.lr)


def _cosine(total: int, warmup: float):
    """Learning-rate multiplier: linear warmup over `warmup * total` steps, then cosine to 0."""
    n_warm = int(warmup * total)

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        progress = (step - n_warm) / max(1, total - n_warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class _NoBar:
    """Stands in for tqdm when the bar is off (tqdm is then not even imported)."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", leave=True, dynamic_ncols=True)


def _metadata(train_set: Dataset, test_set: Dataset, tc: TrainConfig, device: torch.device,
              test_acc: float, train_acc: float, active: float, wall: float,
              history: list[dict[str, float]]) -> dict[str, Any]:
    from bilens import __version__

    return {
        "dataset": train_set.name,
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "seed": tc.seed,
        "version": __version__,
        "active_fraction": active,
        "active_threshold": 0.1,
        "wall_time": wall,
        "preprocessing": train_set.preprocessing,
        "n_train": len(train_set),
        "n_test": len(test_set),
        "training": {**asdict(tc), "device": str(device)},
        "torch": torch.__version__,
        "history": history,
    }

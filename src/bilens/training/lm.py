"""Training the bilinear transformer (docs/spec.md §9): next-token cross-entropy, AdamW with linear
warmup and cosine decay, gradient clipping, seeded and deterministic on the CPU, CUDA with
optional bf16 autocast.

    loss = mean over rows and positions t of  -log softmax(logits_t)[x_{t+1}]
           (+ l1 * mean |z|, the optional L1 penalty on the MLPs' hidden activations)

At the end: held-out cross-entropy (`val_loss`, nats) and perplexity `exp(val_loss)`, the
unigram and bigram baselines on the same held-out positions, next-token accuracy, and on
`synthetic-lm` the accuracy on each rule's predictable positions.

Under `torchrun` (a process group of several ranks, docs/distributed.md) the model is wrapped
in `DistributedDataParallel`: every rank draws the same global batch with the same seeded
generator, takes its contiguous slice, and weights its loss so that DDP's gradient average is
the one-process gradient of the global batch's mean loss. Rank 0 alone evaluates.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from torch import Tensor

from bilens.core import distributed
from bilens.core.config import TransformerConfig
from bilens.core.errors import BilensError, check_fields
from bilens.core.models.transformer import BilinearTransformer, check_tokens
from bilens.core.token_data import TokenData
from bilens.training.ngram import ngram_losses
from bilens.training.train import _cosine, _optimizer, _progress, resolve_device


@dataclass
class LMTrainConfig:
    """How to train a sequence model.

    Args:
        steps: optimizer steps.
        batch_size: rows per step (each `seq_len + 1` tokens).
        lr: peak learning rate (after the warmup, then cosine to 0).
        weight_decay: AdamW decoupled weight decay on the matrices (never the norms).
        warmup: fraction of the steps with a linear ramp up.
        grad_clip: clip the global gradient norm to this (0: off).
        seed: seeds the initialization and the batches.
        device: `"auto"`, `"cpu"`, `"cuda"`, `"cuda:1"`, ...
        bf16: bf16 autocast on CUDA (ignored on the CPU, which trains in float32).
        eval_batch_size: rows per evaluation batch (memory only).
        l1: weight of the penalty `mean |z|` on the MLPs' hidden activations (mean over
            rows, positions, layers and channels), as for the MLP networks; one process only.
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 0.1
    warmup: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    eval_batch_size: int = 64
    l1: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self, "train", positive=("steps", "batch_size", "eval_batch_size"),
                     nonnegative=("lr", "weight_decay", "grad_clip", "l1"),
                     fractions=("warmup",))


@dataclass
class LMTrainResult:
    """What `train_lm` returns: the model (eval mode, `metadata` and `tokenizer` attached),
    its held-out numbers, and everything `config.json` records beside the config."""

    model: BilinearTransformer
    val_loss: float
    perplexity: float
    accuracy: float
    rule_accuracy: dict[str, float]
    baselines: dict[str, float]
    wall_time: float
    tokens_per_second: float
    history: list[dict[str, float]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def evaluate(model: BilinearTransformer, rows: Int[Tensor, "n t1"],
             rules: dict[str, Bool[Tensor, "n t"]] | None = None,
             batch_size: int = 64) -> dict[str, Any]:
    """Held-out next-token loss, perplexity, accuracy, and accuracy per rule mask.

    Args:
        model: the transformer.
        rows: `[N, T+1]` token rows; the model reads `rows[:, :-1]`.
        rules: `{name: mask [N, T]}`: positions to score separately.
        batch_size: rows per forward pass (memory only).

    Returns:
        `{"val_loss", "perplexity", "accuracy", "rule_accuracy": {name: fraction}}`.
    """
    check_tokens(rows[:, :-1], model.config.vocab_size, model.config.n_ctx, "held-out rows")
    check_tokens(rows[:, 1:], model.config.vocab_size, model.config.n_ctx, "held-out rows")
    rules = rules or {}
    loss_sum, correct, hits = 0.0, 0, {k: 0 for k in rules}
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size].to(model.device)
        logits = model(batch[:, :-1]).double()
        target = batch[:, 1:]
        loss_sum += float(F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum"))
        right = logits.argmax(-1) == target                                  # [b, T]
        correct += int(right.sum())
        for name, mask in rules.items():
            hits[name] += int((right & mask[i:i + batch_size].to(right.device)).sum())
    n = rows[:, 1:].numel()
    val_loss = loss_sum / n
    return {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 700.0)),
            "accuracy": correct / n,
            "rule_accuracy": {k: hits[k] / max(1, int(rules[k].sum())) for k in rules}}


def train_lm(model_config: TransformerConfig, tc: LMTrainConfig, data: TokenData,
             progress: bool = True, baselines: dict[str, float] | None = None
             ) -> LMTrainResult:
    """Train a bilinear transformer on `data` and evaluate it on the held-out rows.

    Args:
        model_config: the architecture; `vocab_size` must cover the data's ids and
            `n_ctx` the training rows' length minus one.
        tc: optimizer, schedule, seed and device.
        data: from `bilens.core.lm_data.load_lm_data`.
        progress: show a progress bar (tqdm) with the loss and tokens/s.
        baselines: `ngram_losses(data.train, data.test, vocab_size)` when already computed
            (a sweep over one dataset); None computes them.

    Under a process group of several ranks (torchrun) the steps run as DDP (module
    docstring); rank 0 alone evaluates, the other ranks return NaN scores and no baselines.

    Example:
        >>> data = load_lm_data("synthetic-lm", seq_len=32)                 # doctest: +SKIP
        >>> cfg = TransformerConfig(vocab_size=64, n_ctx=32, d_model=64, d_hidden=128,
        ...                         n_layers=2, n_heads=2)                   # doctest: +SKIP
        >>> train_lm(cfg, LMTrainConfig(steps=500), data).rule_accuracy      # doctest: +SKIP
    """
    seq_len = data.test.shape[1] - 1
    if data.vocab_size > model_config.vocab_size:
        raise BilensError(f"model_config.vocab_size={model_config.vocab_size} but the data "
                          f"{data.name!r} uses ids up to {data.vocab_size - 1}")
    if seq_len > model_config.n_ctx:
        raise BilensError(f"model_config.n_ctx={model_config.n_ctx} but the data's rows read "
                          f"{seq_len} tokens; raise n_ctx or shorten --seq-len")
    device = resolve_device(tc.device)
    if distributed.world().active and device.type == "cuda" and device.index is None:
        device = distributed.device()                         # this rank's GPU, LOCAL_RANK
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        model = BilinearTransformer(model_config)
    model.to(device).train()
    history, n_tokens = _loop(model, tc, data, seq_len, device, progress)
    train_time = time.perf_counter() - start
    model.eval()
    if distributed.is_main():
        scores = evaluate(model, data.test, data.rules, tc.eval_batch_size)
        if baselines is None:
            baselines = ngram_losses(data.train, data.test, model_config.vocab_size)
    else:                                           # rank 0 evaluates; the others wait
        nan = float("nan")
        scores = {"val_loss": nan, "perplexity": nan, "accuracy": nan, "rule_accuracy": {}}
        baselines = {"unigram": nan, "bigram": nan, "beta": nan}
    wall = time.perf_counter() - start
    model.tokenizer = data.tokenizer
    model.metadata = _metadata(data, tc, device, scores, baselines, wall, n_tokens / train_time,
                               history)
    return LMTrainResult(model=model, val_loss=scores["val_loss"],
                         perplexity=scores["perplexity"], accuracy=scores["accuracy"],
                         rule_accuracy=scores["rule_accuracy"], baselines=baselines,
                         wall_time=wall, tokens_per_second=n_tokens / train_time,
                         history=history, metadata=model.metadata)


def _loop(model: BilinearTransformer, tc: LMTrainConfig, data: TokenData, seq_len: int,
          device: torch.device, progress: bool) -> tuple[list[dict[str, float]], int]:
    """The optimizer steps; returns the history (every 100 steps) and tokens seen (of the
    global batches: every rank's). Under a process group, DDP over the ranks (`_step`)."""
    w = distributed.world()
    if w.active and tc.batch_size < w.world_size:
        raise BilensError(f"--batch-size {tc.batch_size} is smaller than the {w.world_size} "
                          f"ranks; each rank needs at least one row of the global batch")
    if w.active and tc.l1 > 0:
        raise BilensError("l1: the L1 penalty on z trains in one process only; drop --l1 "
                          "or run without torchrun")
    net = (torch.nn.parallel.DistributedDataParallel(model) if w.active else model)
    optimizer = _optimizer(model, tc)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(tc.steps, tc.warmup))
    gen = torch.Generator().manual_seed(tc.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=tc.bf16 and device.type == "cuda")
    bar = _progress(tc.steps, progress and w.is_main)
    history, n_tokens, t0 = [], 0, time.perf_counter()
    for step in range(1, tc.steps + 1):
        rows = data.batch(gen, tc.batch_size, seq_len)          # the global batch, every rank
        n_tokens += rows[:, 1:].numel()
        if w.active:
            rows = torch.tensor_split(rows, w.world_size)[w.rank]
        rows = (rows.pin_memory().to(device, non_blocking=True) if device.type == "cuda"
                else rows)                                      # no host sync per step
        with autocast:
            if tc.l1 > 0:                             # the run keeps z for the penalty
                out = model.run(rows[:, :-1], check=False)
                logits, penalty = out.logits, tc.l1 * out.z.float().abs().mean()
            else:
                logits, penalty = net(rows[:, :-1]), 0.0
        loss = _loss(logits, rows[:, 1:], tc.batch_size * seq_len, w) + penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()                          # DDP: the average over ranks of the grads
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        schedule.step()
        bar.update(1)
        if step % 20 == 0 or step == tc.steps:
            value = _global_loss(loss, w)
            if not math.isfinite(value):
                bar.close()
                raise BilensError(f"training diverged at step {step} (loss {value}); lower "
                                  f"--lr, keep --grad-clip > 0, or use a norm")
            rate = n_tokens / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{value:.4f}", tok_s=f"{rate:,.0f}")
            if step % 100 == 0 or step == tc.steps:
                history.append({"step": step, "loss": value, "lr": schedule.get_last_lr()[0],
                                "seconds": time.perf_counter() - t0})
    bar.close()
    if w.active:          # DDP's reducer released now, not at exit after the group is gone
        del net
        gc.collect()
    return history, n_tokens


def _loss(logits: Tensor, target: Tensor, n_global: int, w: distributed.World) -> Tensor:
    """The mean next-token loss of the global batch (one process); under DDP this rank's
    share, `sum over its slice / n_global * world_size`, since DDP averages the gradients."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).flatten(0, 1)
    if not w.active:
        return F.cross_entropy(logits, target.flatten())
    total = F.cross_entropy(logits, target.flatten(), reduction="sum")
    return total * (w.world_size / n_global)


def _global_loss(loss: Tensor, w: distributed.World) -> float:
    """The global batch's mean loss for the log: every rank's share summed / world_size."""
    if not w.active:
        return loss.item()
    value = loss.detach().double().reshape(1)
    torch.distributed.all_reduce(value)
    return value.item() / w.world_size


def _metadata(data: TokenData, tc: LMTrainConfig, device: torch.device, scores: dict[str, Any],
              baselines: dict[str, float], wall: float, rate: float,
              history: list[dict[str, float]]) -> dict[str, Any]:
    from bilens import __version__

    return {
        "dataset": data.name,
        "val_loss": scores["val_loss"],
        "perplexity": scores["perplexity"],
        "val_accuracy": scores["accuracy"],
        "rule_accuracy": scores["rule_accuracy"],
        "baselines": {"unigram_loss": baselines["unigram"], "bigram_loss": baselines["bigram"],
                      "bigram_beta": baselines["beta"]},
        "seed": tc.seed,
        "version": __version__,
        "seq_len": data.test.shape[1] - 1,
        "wall_time": wall,
        "tokens_per_second": rate,
        "preprocessing": data.preprocessing,
        "n_test_rows": len(data.test),
        "training": {**asdict(tc), "device": str(device)},
        "world_size": distributed.world().world_size,
        "torch": torch.__version__,
        "history": history,
    }

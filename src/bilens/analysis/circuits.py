"""The faithfulness curve a circuit finder needs: ablate the `k` channels of largest
predicted `|effect|` together and compare the sum of their predicted effects with the
actual joint effect, for `k = 1, 2, 4, ..., 64`.

Per input `x` and `k`, with `C_k(x)` the top-k channels by `|predicted|`:

    sum_predicted = sum_{(l,k') in C_k} predicted(x, l, k')
    joint         = f(x | z_c := b_c for all c in C_k) - f(x)       (real network)
    sum_actual    = sum_{c in C_k} actual(x, c)                      (if single effects given)

`joint` vs `sum_predicted` is the attribution's faithfulness for a circuit; `joint` vs
`sum_actual` isolates how additive the real effects are.

An example that runs: `faithfulness_curve`'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from bilens.analysis.metrics import normalized_error, pearson
from bilens.core.models.mlp import BilinearNet
from bilens.core.targets import Target

DEFAULT_CIRCUIT_KS = (1, 2, 4, 8, 16, 32, 64)


def top_k_mask(
    predicted: Float[Tensor, "batch layer hidden"],
    k: int,
    candidates: Bool[Tensor, "batch layer hidden"] | None = None,
) -> Bool[Tensor, "batch layer hidden"]:
    """Per input, the `k` channels of largest `|predicted|` (among `candidates`, if given).

    Example:
        >>> top_k_mask(torch.tensor([[[0.1, -3.0, 2.0]]]), 2).tolist()
        [[[False, True, True]]]
    """
    score = predicted.abs().flatten(1).clone()                    # [B, L*H]
    if candidates is not None:
        score[~candidates.flatten(1)] = -math.inf
    k = min(k, score.shape[1])
    idx = score.topk(k, dim=1).indices
    mask = torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
    if candidates is not None:
        mask &= candidates.flatten(1)
    return mask.view(predicted.shape)


def _summary(sum_p: Tensor, joint: Tensor, sum_a: Tensor | None) -> dict[str, float]:
    out = {
        "mean_sum_predicted": sum_p.double().mean().item(),
        "mean_joint": joint.double().mean().item(),
        "normalized_error": normalized_error(sum_p, joint),      # sum|sp - j| / sum|j|
        "pearson": pearson(sum_p, joint),
    }
    if sum_a is not None:
        out["additivity_error"] = normalized_error(sum_a, joint)  # sum|sa - j| / sum|j|
    return out


@torch.no_grad()
def faithfulness_curve(
    model: BilinearNet,
    inputs: Float[Tensor, "batch d_in"],
    predicted: Float[Tensor, "batch layer hidden"],
    target: Target,
    baselines: Float[Tensor, "batch layer hidden"],
    ks: Sequence[int] = DEFAULT_CIRCUIT_KS,
    actual: Float[Tensor, "batch layer hidden"] | None = None,
    candidates: Bool[Tensor, "batch layer hidden"] | None = None,
) -> dict[str, Any]:
    """Ablate the top-k channels by `|predicted|` together, for each `k` in `ks`.

    Args:
        model: the network.
        inputs: `[B, d_in]`.
        predicted: predicted effects `[B, L, H]` (one mode).
        target: the resolved `Target` (see `bilens.core.targets.resolve_target`).
        baselines: the resolved `b` `[B, L, H]` (see `bilens.core.baselines.resolve_baseline`).
        ks: circuit sizes; a size above the number of candidate channels becomes that
            number (duplicates dropped), so the returned `ks` are the sizes really ablated.
        actual: single-channel actual effects, to report `sum_actual` (NaN if a chosen
            channel was not ablated).
        candidates: channels allowed in a circuit (default: all).

    Returns:
        `{"ks": [...], "sum_predicted": [K, B], "joint": [K, B], "sum_actual": [K, B] or None,
        "summary": [per-k dict: mean_sum_predicted, mean_joint, normalized_error, pearson,
        additivity_error]}`.

    Example:
        >>> from bilens.attribution.predict import attribute
        >>> from bilens.core.config import ModelConfig
        >>> from bilens.core.targets import resolve_target
        >>> model = BilinearNet(ModelConfig(d_in=8, d_model=16, d_hidden=32, n_layers=2, n_out=3))
        >>> x = torch.randn(4, 8)
        >>> run = model.run(x)
        >>> target = resolve_target("predicted", run.logits)
        >>> predicted = attribute(model, x, target=target, mode="live")
        >>> curve = faithfulness_curve(model, x, predicted=predicted, target=target,
        ...                            baselines=torch.zeros_like(run.z), ks=(1, 2, 4))
        >>> curve["ks"], sorted(curve["summary"][0])
        ([1, 2, 4], ['mean_joint', 'mean_sum_predicted', 'normalized_error', 'pearson'])
    """
    from bilens.ablation import joint_ablation_effect

    # a circuit can hold at most the channels there are: sizes past that are clamped, so
    # every reported k is the real number of channels ablated together
    available = (predicted[0].numel() if candidates is None
                 else int(candidates.flatten(1).sum(1).min()))
    ks = sorted({min(int(k), available) for k in ks if int(k) >= 1})
    sum_p, joint, sum_a = [], [], []
    for k in ks:
        mask = top_k_mask(predicted, k, candidates)
        sum_p.append(torch.where(mask, predicted, torch.zeros_like(predicted)).sum((1, 2)))
        joint.append(joint_ablation_effect(model, inputs, mask, target=target, baselines=baselines))
        if actual is not None:
            picked = torch.where(mask, actual, torch.zeros_like(actual))
            sum_a.append(picked.sum((1, 2)))          # NaN propagates if one was not ablated
    sum_p_t, joint_t = torch.stack(sum_p), torch.stack(joint).to(predicted.dtype)
    sum_a_t = torch.stack(sum_a) if actual is not None else None
    summary = [_summary(sum_p_t[i], joint_t[i], None if sum_a_t is None else sum_a_t[i])
               for i in range(len(ks))]
    return {"ks": ks, "sum_predicted": sum_p_t, "joint": joint_t, "sum_actual": sum_a_t,
            "summary": summary}

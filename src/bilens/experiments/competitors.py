"""What bilens is timed against: captum's `LayerFeatureAblation` and
`LayerGradientXActivation`, and a plain per-channel hook loop, all on `ZNet` (the same
network with an `nn.Identity` on every `z`, where captum and hooks attach).

captum is a bench dependency only (`pip install bilens[bench]`), imported lazily.
"""

# ruff: noqa: E741  (`l` is the layer index, as in SPEC)
from __future__ import annotations

import torch
from torch import Tensor, nn

from bilens.core.errors import BilensError
from bilens.core.models.mlp import BilinearNet


class ZNet(nn.Module):
    """The same network with an `nn.Identity` on every `z`, for captum and hooks."""

    def __init__(self, model: BilinearNet):
        super().__init__()
        self.model = model
        self.z = nn.ModuleList(nn.Identity() for _ in model.layers)

    def forward(self, x: Tensor) -> Tensor:
        m, post = self.model, self.model.config.norm_position == "post"
        h = m.embed(x)
        for l, layer in enumerate(m.layers):
            u = h if post else layer.norm(h)[0]
            h = h + self.z[l]((u @ layer.L.T) * (u @ layer.R.T)) @ layer.D.T
            if post:
                h = layer.norm(h)[0]
        return m.head(h if post else m.final_norm(h)[0])


def hook_loop(znet: ZNet, x: Tensor, classes: Tensor) -> Tensor:
    """The plain way: a forward hook zeroes one channel, one full forward per channel."""
    cfg = znet.model.config
    out = x.new_empty(x.shape[0], cfg.n_layers, cfg.d_hidden)
    with torch.no_grad():
        f0 = znet(x).gather(1, classes[:, None])[:, 0]
        for l in range(cfg.n_layers):
            for k in range(cfg.d_hidden):
                def hook(_mod, _inp, z, k=k):
                    z = z.clone()
                    z[:, k] = 0.0
                    return z
                handle = znet.z[l].register_forward_hook(hook)
                out[:, l, k] = znet(x).gather(1, classes[:, None])[:, 0] - f0
                handle.remove()
    return out


def _captum():
    try:
        from captum.attr import LayerFeatureAblation, LayerGradientXActivation
    except ImportError as err:
        raise BilensError("bilens bench compares against captum, which is not installed; "
                          "pip install 'bilens[bench]' (or captum), or pass --no-captum") from err
    return LayerFeatureAblation, LayerGradientXActivation


class _Picked(nn.Module):
    """`logits[i, class_i]`; captum repeats the batch `ppe` times, so row `j` is input
    `j mod B` (captum rejects a per-input `target` with `perturbations_per_eval > 1`)."""

    def __init__(self, znet: ZNet, classes: Tensor):
        super().__init__()
        self.znet, self.classes = znet, classes

    def forward(self, x: Tensor) -> Tensor:
        logits = self.znet(x)
        idx = self.classes.repeat(logits.shape[0] // self.classes.shape[0])
        return logits.gather(1, idx[:, None])[:, 0]


def captum_ablation(znet: ZNet, x: Tensor, classes: Tensor, ppe: int) -> Tensor:
    """captum's `LayerFeatureAblation` on every layer's `z` (zero baseline), as effects."""
    LayerFeatureAblation, _ = _captum()
    picked = _Picked(znet, classes)
    outs = []
    for layer in znet.z:
        attr = LayerFeatureAblation(picked, layer).attribute(x, layer_baselines=0.0,
                                                             perturbations_per_eval=ppe)
        outs.append(-attr)                        # captum: f(clean) - f(ablated)
    return torch.stack(outs, 1)


def captum_gxa(znet: ZNet, x: Tensor, classes: Tensor, per_layer: bool = False) -> Tensor:
    """captum's `LayerGradientXActivation` over all layers: `g * z`.

    `per_layer=False` hands captum the list of layers (one forward and backward: the
    strongest way to call it); `per_layer=True` calls it once per layer, the usual idiom of
    layer attribution and the way the issue's reference timing (640 ms on the H200) ran.
    """
    _, LayerGradientXActivation = _captum()
    if per_layer:
        return torch.stack([LayerGradientXActivation(znet, layer).attribute(x, target=classes)
                            for layer in znet.z], 1)
    attrs = LayerGradientXActivation(znet, list(znet.z)).attribute(x, target=classes)
    return torch.stack(list(attrs), 1)

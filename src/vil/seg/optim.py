"""AdamW parameter groups for a segmenter: layer-wise lr decay over the backbone (ViL: two mLSTM blocks per layer, as
the paper; timm models: their own grouping), the neck and heads at the full lr, no weight decay on 1-d parameters
and on the position embedding."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay

from ..train.optim import paired_layer_id
from .segmenter import Segmenter


def backbone_layers(model: Segmenter) -> dict[str, int]:
    """Layer id of every segmenter parameter: the backbone's layers from 0, then one more for the neck and heads."""
    backbone = model.backbone
    names = [name for name, _ in backbone.named_parameters()]
    if model.is_vil:
        depth = len(backbone.blocks)
        layers = {name: paired_layer_id(name, depth) for name in names}
    else:
        from timm.models import group_parameters

        layers = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)  # name -> layer
    top = max(layers.values()) + 1
    return {
        name: (layers[name[len("backbone.") :]] if name.startswith("backbone.") else top)
        for name, _ in model.named_parameters()
    }


def parameter_groups(model: Segmenter, weight_decay: float, layer_decay: float | None) -> list[dict]:
    no_decay = sorted(model.no_weight_decay())
    if layer_decay is None:
        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay)
    layers = backbone_layers(model)
    # timm asks the model for a matcher; this view answers with the layer ids above
    view = SimpleNamespace(
        named_parameters=model.named_parameters, group_matcher=lambda coarse=False: lambda name: layers[name]
    )
    return param_groups_layer_decay(view, weight_decay, no_decay, layer_decay=layer_decay)


def create_optimizer(model: Segmenter, lr: float, weight_decay: float, betas, layer_decay) -> torch.optim.Optimizer:
    groups = parameter_groups(model, weight_decay, layer_decay)
    return create_optimizer_v2(groups, "adamw", lr=lr, weight_decay=weight_decay, betas=tuple(betas))

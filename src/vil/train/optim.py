"""AdamW with the paper's parameter groups, layer-wise lr decay over pairs of mLSTM blocks, and the lr schedule."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import torch
from timm.optim import create_optimizer_v2, param_groups_layer_decay
from timm.scheduler import CosineLRScheduler

from ..models.vision_lstm import VisionLSTM
from .config import TrainConfig

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def paired_layer_id(name: str, depth: int) -> int:
    """The layer of a parameter for layer-wise lr decay, counting two mLSTM blocks (one forward-backward pair) as one
    layer, as the paper: 0 for the stem (patch and position embedding, [CLS]), 1 + i // 2 for block i, and one more
    for the final norm, the pooled-vector norm and the head, which keep the full lr.
    """
    match = _BLOCK.match(name)
    if match:
        return 1 + int(match.group(1)) // 2
    if name.startswith(("patch_embed.", "pos_embed.", "cls_token")):
        return 0
    return 1 + (depth + 1) // 2


def parameter_groups(model: VisionLSTM, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """AdamW parameter groups: no weight decay on 1-d parameters (biases, norms, skip, gates' biases) and on the
    model's ``no_weight_decay()`` names (the position embedding); with ``layer_decay``, lr scales
    ``layer_decay ** (num_layers - 1 - layer)`` (see :func:`paired_layer_id`) stored as ``lr_scale``, which timm's
    schedulers apply.
    """
    no_decay = sorted(model.no_weight_decay())
    if layer_decay is None:
        from timm.optim import param_groups_weight_decay

        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay)
    depth = len(model.blocks)
    # timm's grouping asks the model for a matcher; this view answers with the paired layer ids instead of the
    # model's own one-block-per-layer matcher.
    paired_view = SimpleNamespace(
        named_parameters=model.named_parameters,
        group_matcher=lambda coarse=False: lambda name: paired_layer_id(name, depth),
    )
    return param_groups_layer_decay(paired_view, weight_decay, no_decay, layer_decay=layer_decay)


def create_optimizer(model: VisionLSTM, config: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay, config.layer_decay)
    return create_optimizer_v2(
        groups, "adamw", lr=config.scaled_lr(), weight_decay=config.weight_decay, betas=tuple(config.betas)
    )


def create_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """Per-step schedule: linear warm-up from ``warmup_lr`` over ``warmup_epochs``, then cosine to ``min_lr`` at the
    last step. Call ``step_update(step)`` before optimizer step ``step`` (0-based): the lr is a function of the step
    alone, so a resumed run needs no scheduler state.
    """
    total = config.epochs * steps_per_epoch
    warmup = min(math.ceil(config.warmup_epochs * steps_per_epoch), total - 1)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total - warmup, 1),
        lr_min=config.min_lr,
        warmup_t=warmup,
        warmup_lr_init=config.warmup_lr,
        warmup_prefix=True,  # the cosine starts after the warm-up, as the official schedule
        t_in_epochs=False,
    )


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr of the parameter groups at full scale (the head's, with layer-wise decay)."""
    return max(group["lr"] for group in optimizer.param_groups)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler, parameters, clip_grad: float | None) -> None:
    """One update from the accumulated gradients: unscale (fp16), clip, step, then clear the gradients."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)

"""The backbone of a segmenter: a ViL variant or a timm model with ``forward_intermediates``, cut after its last tap.

Both kinds answer ``forward_intermediates(x, indices=taps, intermediates_only=True)`` with feature maps
(B, D, H/s, W/s) of the raw block outputs (no final norm), so the neck and head are the same for ViL and DeiT.
Weights come from a classification model: ``pretrained=True`` (released weights), or a file or run directory vil
reads (official ``.th``, our ``.safetensors``, a training checkpoint, a ``vil train`` run), with the position
embedding resampled to the segmenter's image size.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from timm.layers import DropPath
from torch import nn

from ..models import VARIANTS
from ..models.factory import create_model, resolve_config
from ..models.vision_lstm import VisionLSTM
from .config import SegmenterConfig, default_taps

logger = logging.getLogger(__name__)


@dataclass
class Backbone:
    """A pruned backbone and what the neck needs to know about its taps."""

    module: nn.Module
    taps: tuple[int, ...]
    dim: int  # channels of every tap
    token_stride: int  # pixels per token step
    patch: int  # image sides must be multiples of this


def is_vil(name: str) -> bool:
    return name.split(".")[0] in VARIANTS


def build_backbone(config: SegmenterConfig, pretrained: bool | str | os.PathLike = False) -> Backbone:
    """The backbone of ``config``, randomly initialised or from classification weights (see the module docstring)."""
    if is_vil(config.backbone):
        module = _build_vil(config, pretrained)
        depth, dim, stride = len(module.blocks), module.embed_dim, module.config.patch_stride[0]
        patch = module.config.patch_size[0]
    else:
        module = _build_timm(config, pretrained)
        depth, dim = len(module.blocks), module.embed_dim
        stride = module.feature_info[-1]["reduction"]
        patch = module.patch_embed.patch_size[0]
    taps = config.taps or default_taps(depth)
    if any(not -depth <= t < depth for t in taps):
        raise ValueError(f"taps {taps} are not blocks of {config.backbone} (depth {depth})")
    taps = tuple(t % depth for t in taps)
    module.prune_intermediate_layers(list(taps), prune_norm=True, prune_head=True)
    return Backbone(module, taps, dim, stride, patch)


def _build_vil(config: SegmenterConfig, pretrained) -> VisionLSTM:
    overrides = dict(img_size=config.img_size, in_chans=config.in_chans, num_classes=0, **config.backbone_args)
    if pretrained is False or pretrained is None:
        model = VisionLSTM(resolve_config(config.backbone, **overrides))
    elif pretrained is True:
        model = create_model(config.backbone, pretrained=True, **overrides)
    else:
        model = _vil_from_file(config.backbone, Path(pretrained), overrides)
    _linear_drop_path(model, config.drop_path_rate)
    return model


def _vil_from_file(name: str, path: Path, overrides: dict) -> VisionLSTM:
    from ..train.model_setup import adapt_pretrained
    from ..weights.classifier import load_classifier

    source = load_classifier(path).model
    target = resolve_config(name, **overrides)
    logger.info("backbone initialised from %s", path)
    return adapt_pretrained(source, target, str(path))  # checks the architecture, resamples the position embedding


def _linear_drop_path(model: VisionLSTM, rate: float) -> None:
    """Stochastic depth rising linearly from 0 at the first block to ``rate`` at the last (the segmentation recipe;
    ViL classification uses one rate for all blocks)."""
    depth = len(model.blocks)
    for index, block in enumerate(model.blocks):
        block_rate = rate * index / max(depth - 1, 1)
        block.drop_path = DropPath(block_rate) if block_rate > 0 else nn.Identity()


def _build_timm(config: SegmenterConfig, pretrained) -> nn.Module:
    import timm

    kwargs = dict(
        img_size=config.img_size, in_chans=config.in_chans, num_classes=0, drop_path_rate=config.drop_path_rate,
        **config.backbone_args,
    )  # fmt: skip
    if pretrained not in (False, None, True):
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained))  # timm resamples the position embedding
    create = functools.partial(timm.create_model, config.backbone, pretrained=pretrained not in (False, None), **kwargs)
    try:
        try:  # any input size, as a ViL: the position embedding is resampled on the fly (ViT-family models)
            model = create(dynamic_img_size=True)
        except TypeError:  # a model family without dynamic_img_size
            model = create()
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ValueError(
                f"unknown backbone {config.backbone!r}: neither a ViL variant ({', '.join(VARIANTS)}) nor a timm model"
            ) from None
        raise
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "blocks"):
        raise ValueError(f"timm model {config.backbone!r} has no forward_intermediates over blocks: cannot tap it")
    return model

"""Segmenter: backbone taps -> simple feature pyramid -> UperNet -> logits at the input resolution."""

from __future__ import annotations

import os

import torch
from torch import nn

from .backbone import build_backbone, is_vil
from .config import SegmenterConfig, default_channels, default_pyramid_scales
from .heads import FCNHead, LinearHead, UperNetHead, resize
from .neck import SimpleFeaturePyramid

AUX_LEVEL = 2  # the auxiliary FCN head reads pyramid level 2 (stride 16 for 16 px tokens)


class Segmenter(nn.Module):
    """Images (B, C, H, W) -> logits (B, num_classes, H, W), for any H, W the backbone's patch tiles.

    ``forward(x, with_aux=True)`` (training) also returns the auxiliary head's logits at the input resolution.
    """

    def __init__(self, config: SegmenterConfig, pretrained: bool | str | os.PathLike = False):
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        backbone = build_backbone(config, pretrained)
        self.backbone, self.taps, self.token_stride = backbone.module, backbone.taps, backbone.token_stride
        self.size_multiple = backbone.patch  # image sides the backbone tiles
        self.neck = self.aux_head = None
        if config.head == "linear":
            self.decode_head = LinearHead(len(backbone.taps) * backbone.dim, config.num_classes, backbone.token_stride)
            return
        scales = config.pyramid_scales or default_pyramid_scales(backbone.token_stride)
        channels = config.channels or default_channels(backbone.dim)
        self.neck = SimpleFeaturePyramid(backbone.dim, scales)
        self.decode_head = UperNetHead(
            [backbone.dim] * 4, channels, config.num_classes, config.pool_scales, config.dropout
        )
        if config.aux_channels:
            self.aux_head = FCNHead(backbone.dim, config.aux_channels, config.num_classes, config.dropout)

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        size = x.shape[-2:]
        features = self.backbone.forward_intermediates(x, indices=list(self.taps), intermediates_only=True)
        if self.neck is None:  # the linear head reads all taps (same grid), stacked along the channels
            logits = resize(self.decode_head(torch.cat(features, dim=1)), size)
            return (logits, None) if with_aux else logits
        levels = self.neck(features)  # finest first
        logits = resize(self.decode_head(levels), size)
        if not with_aux:
            return logits
        if self.aux_head is None:
            return logits, None
        return logits, resize(self.aux_head(levels[AUX_LEVEL]), size)

    @property
    def is_vil(self) -> bool:
        return is_vil(self.config.backbone)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each backbone block in the backward pass instead of storing its activations."""
        self.backbone.set_grad_checkpointing(enable)

    def count_parameters(self, aux: bool = False) -> int:
        """Parameters of the model as the paper counts them: without the auxiliary head unless ``aux``."""
        total = sum(p.numel() for p in self.parameters())
        if not aux and self.aux_head is not None:
            total -= sum(p.numel() for p in self.aux_head.parameters())
        return total


def create_segmenter(
    backbone: str,
    num_classes: int,
    head: str = "upernet",
    pretrained: bool | str | os.PathLike = False,
    img_size: int = 512,
    **backbone_overrides,
) -> Segmenter:
    """A UperNet segmenter on a ViL variant or a timm model, e.g. ``create_segmenter("vil2_tiny_patch16_224", 150)``.

    pretrained: False (random), True (the backbone's released classification weights), or a file or run directory
        of classification weights (official ``.th``, ``.safetensors``, ``vil train`` run); the position embedding is
        resampled to ``img_size``. Segmenter settings (``taps``, ``pyramid_scales``, ``channels``, ``aux_channels``,
        ``drop_path_rate``, ``in_chans``, ...) may be passed too; everything else goes to the backbone.
    """
    own = {name: backbone_overrides.pop(name) for name in list(backbone_overrides) if name in _SEGMENTER_FIELDS}
    config = SegmenterConfig(
        backbone=backbone,
        num_classes=num_classes,
        head=head,
        img_size=img_size,
        backbone_args=backbone_overrides,
        **own,
    )
    return Segmenter(config, pretrained)


_SEGMENTER_FIELDS = (
    "in_chans",
    "taps",
    "pyramid_scales",
    "channels",
    "pool_scales",
    "aux_channels",
    "dropout",
    "drop_path_rate",
)

"""The UperNet decoder and the auxiliary FCN head, as mmsegmentation's UPerHead and FCNHead (docs/design.md §8),
and a linear head for small tasks.

ConvModule = Conv (no bias) + BatchNorm + ReLU. UperNet: pyramid pooling on the coarsest level, an FPN (1x1
laterals, top-down bilinear sums, 3x3 convs), every level upsampled to the finest and fused by a 3x3 conv, then
dropout and a 1x1 classifier. The logits come out at the finest level's resolution; the segmenter upsamples them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvModule(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")  # as mmcv's ConvModule


class Classifier(nn.Sequential):
    """Dropout2d + 1x1 conv to the classes (mmsegmentation's cls_seg, weights N(0, 0.01))."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__(nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), nn.Conv2d(channels, num_classes, 1))
        nn.init.normal_(self[1].weight, std=0.01)
        nn.init.zeros_(self[1].bias)


class PyramidPooling(nn.Module):
    """x (B, C, h, w) -> concat(x, upsampled avg-pooled x at each scale) (B, C + len(scales) * channels, h, w)."""

    def __init__(self, in_channels: int, channels: int, scales: tuple[int, ...]):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1)) for s in scales
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize(stage(x), size) for stage in self.stages], dim=1)


class UperNetHead(nn.Module):
    """4 levels (B, D_i, h_i, w_i), finest first -> logits (B, num_classes, h_0, w_0)."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int, pool_scales=(1, 2, 3, 6), dropout=0.1):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.classifier = Classifier(channels, num_classes, dropout)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, levels, strict=False)]
        laterals.append(self.bottleneck(self.ppm(levels[-1])))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse into fine
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=False)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [resize(x, size) for x in outs[1:]], dim=1))
        return self.classifier(fused)


class FCNHead(nn.Module):
    """The auxiliary head: one 3x3 ConvModule, dropout and a 1x1 classifier on one level."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.conv = ConvModule(in_channels, channels, 3)
        self.classifier = Classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv(x))


class LinearHead(nn.Module):
    """Each token's classes for each of its ``upscale`` x ``upscale`` pixels, from one 1x1 conv and a pixel shuffle:
    (B, C, h, w) -> (B, num_classes, h * upscale, w * upscale), C = the taps' channels stacked. A learned
    upsampling of the patch features, far cheaper than UperNet at full resolution (the digit scenes' default run)."""

    def __init__(self, in_channels: int, num_classes: int, upscale: int):
        super().__init__()
        self.upscale = upscale
        self.proj = nn.Conv2d(in_channels, num_classes * upscale * upscale, 1)
        nn.init.normal_(self.proj.weight, std=0.01)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.proj(x), self.upscale)

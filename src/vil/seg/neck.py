"""The simple feature pyramid (BEiT, ViTDet): one isotropic feature map per tap, resized to a pyramid of strides."""

from __future__ import annotations

import torch
from torch import nn


def _up2(dim: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)


def scale_module(dim: int, scale: float) -> nn.Module:
    """x4: ConvTranspose -> BatchNorm -> GELU -> ConvTranspose; x2: ConvTranspose; x1: identity; x1/2, x1/4: max
    pooling (docs/design.md §8)."""
    if scale == 4:
        return nn.Sequential(_up2(dim), nn.BatchNorm2d(dim), nn.GELU(), _up2(dim))
    if scale == 2:
        return _up2(dim)
    if scale == 1:
        return nn.Identity()
    if scale in (0.5, 0.25):
        return nn.MaxPool2d(int(1 / scale))
    raise ValueError(f"no pyramid module for scale {scale}; expected 4, 2, 1, 0.5 or 0.25")


class SimpleFeaturePyramid(nn.Module):
    """Maps 4 taps (B, D, h, w) to 4 levels (B, D, h * scale, w * scale)."""

    def __init__(self, dim: int, scales: tuple[float, ...]):
        super().__init__()
        self.scales = tuple(scales)
        self.levels = nn.ModuleList(scale_module(dim, s) for s in self.scales)
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} feature maps, got {len(features)}")
        return [level(x) for level, x in zip(self.levels, features, strict=True)]

"""Patch embedding and the learnable 2-D position embedding that resamples itself to any token grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """Cut an image into (possibly overlapping) patches and project each to a token: (B, C, H, W) -> (B, h, w, D)."""

    def __init__(self, in_chans: int, dim: int, patch_size: tuple[int, int], stride: tuple[int, int]):
        super().__init__()
        self.patch_size = patch_size
        self.stride = stride
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=stride)
        # initialised as the equivalent nn.Linear, as the official code does
        nn.init.xavier_uniform_(self.proj.weight.view(dim, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: the tokens' layout from here on; a permuted view would carry through the residual stream,
        # making every block's layer norm copy its input and its residual add run strided
        return self.proj(x).permute(0, 2, 3, 1).contiguous()  # (B, h, w, D)


class PosEmbed2d(nn.Module):
    """Learnable position embedding on a fixed grid, resampled (bicubic) when the token grid differs."""

    def __init__(self, grid: tuple[int, int], dim: int):
        super().__init__()
        self.embed = nn.Parameter(torch.zeros(1, *grid, dim))  # (1, h, w, D)
        nn.init.trunc_normal_(self.embed, std=0.02)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.embed.shape[1:3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, h, w, D) -> x + embedding resampled to (h, w)."""
        return x + resample_pos_embed(self.embed, tuple(x.shape[1:3]))


def resample_pos_embed(embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resampling of a (1, h, w, D) embedding to (1, *grid, D), as the official ``interpolate_sincos``."""
    if tuple(embed.shape[1:3]) == tuple(grid):
        return embed
    image = embed.permute(0, 3, 1, 2)  # (1, D, h, w)
    return F.interpolate(image, size=grid, mode="bicubic").permute(0, 2, 3, 1)

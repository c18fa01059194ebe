"""The short convolution in front of q and k: depthwise Conv2d on the token grid (v2) or causal Conv1d (v1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .. import kernels


class SequenceConv2d(nn.Conv2d):
    """Depthwise k x k convolution of a token sequence laid out on a grid, with 'same' padding.

    The sequence (B, N, C) is read row-major as an image of ``grid`` = (H, W) tokens. A [CLS] token at index
    ``H * W // 2`` (``has_cls``) has no place on the grid: it is convolved as an isolated pixel (zero padding).
    """

    def __init__(self, channels: int, kernel_size: int = 3, bias: bool = True):
        if kernel_size % 2 != 1:
            raise ValueError(f"the 2-D sequence conv needs an odd kernel size, got {kernel_size}")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], has_cls: bool = False) -> torch.Tensor:
        if has_cls:
            middle = grid[0] * grid[1] // 2
            patches = torch.cat([x[:, :middle], x[:, middle + 1 :]], dim=1)
            cls = x[:, middle : middle + 1]  # (B, 1, C)
            cls = cls * self.weight[:, 0, self.padding[0], self.padding[1]]
            if self.bias is not None:
                cls = cls + self.bias
            patches = self._conv_grid(patches, grid)
            return torch.cat([patches[:, :middle], cls, patches[:, middle:]], dim=1)
        return self._conv_grid(x, grid)

    def fused_silu(self, x: torch.Tensor, grid: tuple[int, int], has_cls: bool = False) -> torch.Tensor | None:
        """silu(self(x, grid)) by the fused CPU kernels, forward and backward (keeping only x, like checkpointing);
        None where they do not apply (then compute the PyTorch expression)."""
        if has_cls or not kernels.conv2d_silu_supported(x, grid, self.weight, self.bias):
            return None
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, self.weight, self.bias)):
            return _FusedConvSilu.apply(x, self.weight, self.bias, grid)
        return kernels.conv2d_silu(x, grid, self.weight, self.bias)

    def _conv_grid(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        batch, num_tokens, channels = x.shape
        # (B, H*W, C) -> (B, C, H, W) as a channels-last view: no copy, and the depthwise conv runs channels-last
        image = x.view(batch, grid[0], grid[1], channels).permute(0, 3, 1, 2)
        out = super().forward(image)  # (B, C, H, W)
        return out.permute(0, 2, 3, 1).reshape(batch, num_tokens, channels)


class _FusedConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, grid):
        ctx.save_for_backward(x, weight, bias)
        ctx.grid = grid
        return kernels.conv2d_silu(x, grid, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        x, weight, bias = ctx.saved_tensors
        return *kernels.conv2d_silu_backward(x, ctx.grid, weight, bias, d_out), None


class CausalConv1d(nn.Module):
    """Depthwise causal convolution along the sequence: token t sees tokens t-k+1 .. t."""

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True):
        super().__init__()
        self.kernel_size = kernel_size
        # Wrapped as .conv so that the state dict matches the official VisionLSTM ("conv.conv.weight").
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None, has_cls: bool = False) -> torch.Tensor:
        # (B, S, C) -> (B, C, S), left-pad so the conv is causal
        x = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))
        return self.conv(x).transpose(1, 2)

"""Block-diagonal ("headwise") linear projection of the mLSTM layer."""

from __future__ import annotations

import torch
from torch import nn


class HeadwiseLinear(nn.Module):
    """Linear map with a block-diagonal weight of ``dim // block_size`` blocks of ``block_size x block_size``.

    Output channel o of block h: ``out[h*bs + o] = sum_d weight[h, o, d] * in[h*bs + d] (+ bias)``; the weight
    has the official shape (num_blocks, block_size, block_size).
    """

    def __init__(self, dim: int, block_size: int = 4, bias: bool = True):
        super().__init__()
        if dim % block_size:
            raise ValueError(f"dim {dim} is not divisible by the headwise block size {block_size}")
        self.dim = dim
        self.block_size = block_size
        self.weight = nn.Parameter(torch.empty(dim // block_size, block_size, block_size))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        nn.init.normal_(self.weight, std=(2 / 5 / block_size) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return headwise_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.dim}, block_size={self.block_size}, bias={self.bias is not None}"


def headwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x: (..., NB * BS); weight: (NB, BS_out, BS); bias: (NB * BS_out,) or None -> (..., NB * BS_out)."""
    num_blocks, out_size, in_size = weight.shape
    x = x.unflatten(-1, (num_blocks, in_size))  # (..., NB, BS)
    out = torch.einsum("...hd,hod->...ho", x, weight).flatten(-2)  # (..., NB * BS_out)
    return out if bias is None else out + bias

"""Normalisation layers whose weight is stored as a residual (used as ``1 + weight``), as in xLSTM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualLayerNorm(nn.Module):
    """LayerNorm over the last dimension with weight ``1 + w`` (w initialised to 0) and an optional bias."""

    def __init__(self, dim: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), 1.0 + self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, bias={self.bias is not None}, eps={self.eps}"


class MultiHeadNorm(ResidualLayerNorm):
    """Per-head LayerNorm of the mLSTM cell output (GroupNorm with one group per head).

    Input (B, NH, S, DH), output (B, S, NH * DH).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return multi_head_norm(x, self.weight, self.bias, self.eps)


def multi_head_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """Functional :class:`MultiHeadNorm`: x (B, NH, S, DH), residual weight and bias (E,) -> (B, S, E), plus an
    optional ``residual`` (B, S, E) added in the same pass.

    A layer norm over each head's DH channels, then the per-channel affine; the affine also transposes the heads
    into the token layout (its output takes the residual's layout). On CPU this is twice as fast as
    ``group_norm`` on (B*S, E), which walks the channels of each group with a scalar loop.
    """
    batch, heads, seq_len, head_dim = x.shape
    normed = F.layer_norm(x, (head_dim,), eps=eps).transpose(1, 2)  # (B, S, NH, DH) view
    scale = (1.0 + weight).view(heads, head_dim)
    if residual is None:
        base = torch.zeros_like(scale) if bias is None else bias.view(heads, head_dim)
        return torch.addcmul(base, normed, scale).reshape(batch, seq_len, heads * head_dim)
    if bias is not None:
        residual = residual + bias
    out = torch.addcmul(residual.view(batch, seq_len, heads, head_dim), normed, scale)
    return out.view(batch, seq_len, heads * head_dim)

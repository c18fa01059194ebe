"""The output gate and down-projection of the mLSTM layer, fused to keep less for the backward pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def gated_projection(h: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """linear(h * silu(z), weight, bias): (B, N, E) twice -> (B, N, D).

    Autograd would keep silu(z) and the product (two E-wide tensors per block); this keeps only h and z (which
    the layer holds anyway) and recomputes the product in the backward pass.
    """
    return _GatedProjection.apply(h, z, weight, bias)


class _GatedProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, z, weight, bias):
        ctx.save_for_backward(h, z, weight)
        ctx.has_bias = bias is not None
        return F.linear(h * F.silu(z), weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        h, z, weight = ctx.saved_tensors
        sigmoid_z = torch.sigmoid(z)
        silu_z = z * sigmoid_z
        d_gated = d_out @ weight  # (B, N, E)
        d_weight = d_out.flatten(0, -2).t() @ (h * silu_z).flatten(0, -2)  # (D, E)
        d_bias = d_out.flatten(0, -2).sum(dim=0) if ctx.has_bias else None
        d_h = d_gated * silu_z
        # silu'(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z)))
        d_z = d_gated.mul_(h).mul_(sigmoid_z.mul_(1 + z * (1 - sigmoid_z)))
        return d_h, d_z, d_weight, d_bias

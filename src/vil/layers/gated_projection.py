"""The output gate and down-projection of the mLSTM layer, kept lean for the backward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..ops.projected import grad_leaves, hand_recompute_applies, leaf_grads


def gated_projection(
    make_h: Callable[..., torch.Tensor],
    h_inputs: Sequence[torch.Tensor],
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``linear(make_h(*h_inputs) * silu(z), weight, bias)``: (B, N, E) -> (B, N, D).

    Autograd would keep h, silu(z) and the gated product (three E-wide tensors per block). This keeps only
    ``h_inputs`` and z, which the layer holds for other reasons anyway, and recomputes the cheap elementwise
    part (and whatever ``make_h`` does, e.g. the output norm and skip) in the backward pass; the matrix product
    is not recomputed.
    """
    if not hand_recompute_applies(z):
        return F.linear(make_h(*h_inputs) * F.silu(z), weight, bias)
    return _GatedProjection.apply(make_h, z, weight, bias, *h_inputs)


class _GatedProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, make_h, z, weight, bias, *h_inputs):
        ctx.save_for_backward(z, weight, *h_inputs)
        ctx.make_h, ctx.has_bias = make_h, bias is not None
        return F.linear(make_h(*h_inputs) * F.silu(z), weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        z, weight, *h_inputs = ctx.saved_tensors
        with torch.enable_grad():
            leaves = grad_leaves((z, *h_inputs))
            gated = ctx.make_h(*leaves[1:]) * F.silu(leaves[0])  # (B, N, E)
        d_gated = d_out @ weight
        d_weight = d_out.flatten(0, -2).t() @ gated.detach().flatten(0, -2)  # (D, E)
        d_bias = d_out.flatten(0, -2).sum(dim=0) if ctx.has_bias else None
        d_z, *d_h_inputs = leaf_grads(gated, leaves, d_gated)
        return None, d_z, d_weight, d_bias, *d_h_inputs

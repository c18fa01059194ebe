"""The output gate and down-projection of the mLSTM layer, kept lean for the backward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..ops.projected import grad_leaves, hand_recompute_applies, leaf_grads


def gated_projection(
    make_gated: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``linear(make_gated(*inputs), weight, bias)``: (B, N, E) -> (B, N, D), where ``make_gated`` is the cheap
    elementwise part in front of the product: the output gate silu(z) * h, with inputs[0] = z (and whatever makes
    h, e.g. the output norm and skip).

    Autograd would keep h, silu(z) and the gated product (three E-wide tensors per block). This keeps only
    ``inputs``, which the layer holds for other reasons anyway, and recomputes the elementwise part in the backward
    pass; the matrix product is not recomputed. ``make_gated.hand_backward(inputs, d_gated)``, if it exists and
    does not return None, gives (the gated product, dL/d inputs) instead of autograd.
    """
    if not hand_recompute_applies(inputs[0]):
        return F.linear(make_gated(*inputs), weight, bias)
    return _GatedProjection.apply(make_gated, weight, bias, *inputs)


class _GatedProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, make_gated, weight, bias, *inputs):
        ctx.save_for_backward(weight, *inputs)
        ctx.make_gated, ctx.has_bias = make_gated, bias is not None
        return F.linear(make_gated(*inputs), weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        weight, *inputs = ctx.saved_tensors
        d_gated = d_out @ weight  # (B, N, E)
        # make_gated's own backward where it has one (a fused kernel), else autograd of its recomputation
        by_hand = getattr(ctx.make_gated, "hand_backward", None)
        result = None if by_hand is None else by_hand(inputs, d_gated)
        if result is None:
            with torch.enable_grad():
                leaves = grad_leaves(inputs)
                gated = ctx.make_gated(*leaves)  # (B, N, E)
            d_inputs = leaf_grads(gated, leaves, d_gated)
        else:
            gated, d_inputs = result
        d_weight, d_bias = linear_parameter_grads(d_out, gated.detach(), ctx.has_bias)  # (D, E), (D,)
        return None, d_weight, d_bias, *d_inputs


def linear_parameter_grads(d_out: torch.Tensor, x: torch.Tensor, has_bias: bool):
    """dL/d weight (out, in) and dL/d bias (None without one) of ``linear(x, weight, bias)`` given dL/d out, for x
    (..., in) and d_out (..., out)."""
    flat = d_out.flatten(0, -2)
    return flat.t() @ x.flatten(0, -2), flat.sum(dim=0) if has_bias else None

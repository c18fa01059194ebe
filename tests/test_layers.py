"""Building blocks whose backward pass is written by hand, and the fast headwise projection."""

import torch

from vil.layers.gated_projection import gated_projection
from vil.layers.headwise import HeadwiseLinear, headwise_linear


def test_gated_projection_gradients(recompute_mode):
    h, c, z = (torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True) for _ in range(3))
    weight = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def make_gated(z, h, c):  # anything differentiable that the layer would recompute
        return h.tanh() * c * torch.sigmoid(z)

    assert torch.autograd.gradcheck(
        lambda h, c, z, w, b: gated_projection(make_gated, [z, h, c], w, b), (h, c, z, weight, bias)
    )
    assert torch.autograd.gradcheck(lambda h, z, w: gated_projection(torch.mul, [z, h], w, None), (h, z, weight))


def test_headwise_projection_matches_the_official_einsum():
    x = torch.randn(2, 7, 64)
    projections = [HeadwiseLinear(64, 4, bias=True) for _ in range(2)]
    for p in projections:
        torch.nn.init.normal_(p.bias)
    outputs = headwise_linear(x, [p.weight for p in projections], [p.bias for p in projections])
    for p, out in zip(projections, outputs, strict=True):
        reference = torch.einsum("bshd,hod->bsho", x.view(2, 7, 16, 4), p.weight).reshape(2, 7, 64) + p.bias
        torch.testing.assert_close(out, reference)
    # the head layout (B, NH, S, DH) holds the same numbers
    heads = headwise_linear(x, [projections[0].weight], [projections[0].bias], num_heads=4)[0]
    torch.testing.assert_close(heads, projections[0](x).view(2, 7, 4, 16).transpose(1, 2))
    assert heads.is_contiguous()

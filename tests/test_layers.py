"""Building blocks whose backward pass is written by hand, and the fast headwise projection."""

import torch

from vil import ViLConfig, VisionLSTM
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


def test_inference_follows_parameter_updates_and_loaded_weights():
    # the folded gate weights are kept between inference calls; any in-place update of a parameter (an optimizer
    # step, load_state_dict) must be seen by the next call
    model = VisionLSTM(ViLConfig(dim=32, depth=2, img_size=32, patch_size=8, num_classes=5)).eval()
    other = VisionLSTM(ViLConfig(dim=32, depth=2, img_size=32, patch_size=8, num_classes=5)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        torch.testing.assert_close(model(images), before)  # kept: the same numbers
        cell = model.blocks[0].layer.branches[0].mlstm_cell
        cell.igate.weight.add_(0.5)
        cell.fgate.bias.sub_(2.0)
        updated = model(images)
    with torch.enable_grad():  # the path that always folds afresh
        expected = model(images).detach()
    assert not torch.allclose(updated, before)
    torch.testing.assert_close(updated, expected, rtol=1e-4, atol=1e-5)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(images), other(images), rtol=1e-5, atol=1e-6)


def test_inference_follows_a_change_of_dtype():
    # module.to(dtype) assigns each parameter new storage without bumping its version: the kept gate weights must
    # not be the old dtype's (they were, and a float64 model then failed with a dtype mismatch)
    model = VisionLSTM(ViLConfig(dim=32, depth=2, img_size=32, patch_size=8, num_classes=5)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        single = model(images)
        double = model.double()(images.double())
        assert double.dtype == torch.float64
        torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.float()(images), single)

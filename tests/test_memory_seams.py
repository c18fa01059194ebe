"""What keeps a training step's memory down at high resolution: the recomputed output gate, the gradients made
in one buffer and the heap trimmed when the backward pass starts. They must leave every gradient as it would be
without them."""

import gc
import weakref

import pytest
import torch

from vil import ViLConfig, VisionLSTM, kernels
from vil.layers import mlstm_layer
from vil.models import vision_lstm
from vil.utils import cpu_allocator


def _small_model(version: int = 2) -> VisionLSTM:
    torch.manual_seed(0)
    # 256 tokens x 16 images x E = 64: large enough for the hand-written recomputing backward passes to apply
    return VisionLSTM(ViLConfig(dim=32, depth=2, img_size=64, patch_size=4, num_classes=5, version=version))


def _gradients(model: VisionLSTM, images: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(images).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("version", [1, 2])  # v1 has no biases
@pytest.mark.parametrize("with_kernels", [True, False])
def test_recomputed_gate_input_gives_the_gradients_of_the_kept_one(monkeypatch, with_kernels, version):
    model, images = _small_model(version), torch.randn(16, 3, 64, 64)
    with kernels.disabled() if not with_kernels else torch.enable_grad():
        kept = _gradients(model, images)
        monkeypatch.setattr(mlstm_layer, "RECOMPUTE_Z_MIN_TOKENS", 1)  # every sequence recomputes z
        recomputed = _gradients(model, images)
    for want, got in zip(kept, recomputed, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gradients_in_one_buffer_are_the_gradients_autograd_makes(monkeypatch):
    model, images = _small_model(), torch.randn(2, 3, 64, 64)
    buffered = _gradients(model, images)
    bases = {p.grad._base.data_ptr() for p in model.blocks.parameters()}
    assert len(bases) == 1  # all the blocks' gradients are views of one buffer
    monkeypatch.setattr(vision_lstm, "allocate_gradients_when_reached", lambda x, parameters: None)
    plain = _gradients(model, images)
    for want, got in zip(plain, buffered, strict=True):
        assert torch.equal(got, want)  # 0 + g is g


def test_existing_gradients_are_accumulated_into_as_before():
    model, images = _small_model(), torch.randn(2, 3, 64, 64)
    once = _gradients(model, images)
    model(images).square().sum().backward()  # a second pass adds to the gradients of the first
    for single, p in zip(once, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, 2 * single)


def test_a_forward_pass_without_backward_frees_its_graph():
    model, images = _small_model(), torch.randn(2, 3, 64, 64)
    outputs = []
    model.blocks[-1].register_forward_hook(lambda module, args, output: outputs.append(weakref.ref(output)))
    out = model(images)
    (graph,) = outputs  # the last block's output: what the gradient buffer's hook is registered on
    del out
    gc.disable()  # freed by reference counting alone: the hook on the blocks' output must not close a cycle
    try:
        assert graph() is None
    finally:
        gc.enable()


def test_features_for_a_dense_head_buffer_only_the_blocks_they_depend_on():
    model, images = _small_model(), torch.randn(2, 3, 64, 64)
    maps = model.forward_intermediates(images, indices=[0], intermediates_only=True, stop_early=True)
    maps[0].square().sum().backward()
    assert model.blocks[0].layer.proj_up.weight.grad is not None
    assert all(p.grad is None for p in model.blocks[1].parameters())  # block 1 did not run
    assert model.head.weight.grad is None


@pytest.mark.parametrize("tuned", [True, False])
def test_the_heap_is_trimmed_once_when_the_backward_pass_starts_if_malloc_is_tuned(monkeypatch, tuned):
    model, images = _small_model(), torch.randn(2, 3, 64, 64)
    calls = []
    monkeypatch.setattr(cpu_allocator, "TRIM_MIN_TOKENS", 256)  # the small model's sequences count as long
    monkeypatch.setattr(cpu_allocator, "_tuned", tuned)
    monkeypatch.setattr(cpu_allocator, "_glibc_function", lambda name: {"malloc_trim": calls.append}[name])
    with torch.no_grad():
        model(images)
    out = model(images)
    assert calls == []  # neither a pass without gradients nor the forward pass itself trims
    out.square().sum().backward()
    assert calls == ([0] if tuned else [])


@pytest.mark.parametrize("min_tokens", [256, 257])
def test_only_long_sequences_are_trimmed(monkeypatch, min_tokens):
    model, images = _small_model(), torch.randn(2, 3, 64, 64)  # 256 tokens per image
    calls = []
    monkeypatch.setattr(cpu_allocator, "TRIM_MIN_TOKENS", min_tokens)
    monkeypatch.setattr(cpu_allocator, "_tuned", True)
    monkeypatch.setattr(cpu_allocator, "_glibc_function", lambda name: {"malloc_trim": calls.append}[name])
    model(images).square().sum().backward()
    assert calls == ([0] if min_tokens <= 256 else [])

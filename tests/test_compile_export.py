"""The model works under torch.compile and torch.export."""

import pytest
import torch

from vil import ViLConfig, VisionLSTM


def tiny(**overrides):
    return VisionLSTM(ViLConfig(dim=32, depth=2, patch_size=4, img_size=16, num_classes=10, **overrides)).eval()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["parallel", "chunkwise"])
def test_torch_compile_matches_eager(backend):
    model = tiny(mlstm_backend=backend, chunk_size=8)
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.slow
def test_torch_compile_trains():
    model = tiny(version=1, block_design="quad_alternating").train()
    compiled = torch.compile(model)
    compiled(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("version", [1, 2])
def test_torch_export_matches_eager(version):
    model = tiny(version=version, mlstm_backend="chunkwise", chunk_size=8)
    x = torch.randn(2, 3, 16, 12)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), model(x), atol=1e-6)

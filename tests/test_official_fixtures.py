"""vil.load_official reproduces the official implementation's outputs (golden fixtures made with the official code)."""

import json
from pathlib import Path

import pytest
import torch
from official_format import official_hub_remap
from safetensors.torch import load_file

import vil

FIXTURES = Path(__file__).parent / "data" / "official"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.th"))


def fixture_io(name: str) -> dict:
    return load_file(FIXTURES / f"{name}.io.safetensors")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", ["parallel", "chunkwise", "recurrent"])
def test_fixture_outputs_are_reproduced(name, backend):
    model = vil.load_official(FIXTURES / f"{name}.th", mlstm_backend=backend, chunk_size=16).eval()
    io = fixture_io(name)
    with torch.no_grad():
        output = model(io["input"])
    torch.testing.assert_close(output, io["output"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_inferred_architecture_is_the_fixtures(name):
    arch = json.loads((FIXTURES / f"{name}.json").read_text())
    config = vil.load_official(FIXTURES / f"{name}.th").config
    assert config.version == arch["version"]
    assert config.dim == arch["dim"]
    assert config.depth == arch["depth"] * (2 if arch["official_class"] == "VisionLSTM2" else 1)  # v2 counts pairs
    assert config.patch_size == (arch["patch_size"],) * 2
    assert config.img_size == tuple(arch["input_shape"][1:])
    assert config.num_classes == arch["output_shape"][0]
    assert config.pooling == ("bilateral_concat" if arch["version"] == 2 else "bilateral_avg")


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_of_the_official_modules_reproduces_the_outputs(name, tmp_path):
    """The official hub renames a released file to its standalone VisionLSTM(2) modules; that layout loads too."""
    arch = json.loads((FIXTURES / f"{name}.json").read_text())
    checkpoint = torch.load(FIXTURES / f"{name}.th", weights_only=True, map_location="cpu")
    path = tmp_path / "module_state_dict.th"
    torch.save(official_hub_remap(checkpoint["state_dict"], arch["version"]), path)
    model = vil.load_official(path).eval()
    io = fixture_io(name)
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_new_resolution_equals_resampling_on_the_fly(name):
    """img_size=48 resamples the stored 8x8 position embedding once, exactly as the model does per forward pass
    (and as the official load_state_dict does when the official model is built at another size).
    """
    path = FIXTURES / f"{name}.th"
    at_48 = vil.load_official(path, img_size=48).eval()
    at_32 = vil.load_official(path).eval()
    assert at_48.pos_embed.grid == (12, 12)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(at_48(x), at_32(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_feature_maps_of_a_loaded_checkpoint(name):
    model = vil.load_official(FIXTURES / f"{name}.th", num_classes=0).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 32, 64), indices=2, intermediates_only=True)
        pooled = model(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 8, 16)] * 2
    assert pooled.shape == (1, model.head_hidden_size)


def test_fixtures_are_present():
    assert len(NAMES) == 2

"""Released weights by name: create_model(pretrained=...), the torch.hub download (mocked: no network in tests),
hubconf.py through torch.hub's local source, and timm's registry.
"""

import importlib.util
import logging
import urllib.error
from pathlib import Path

import pytest
import timm
import torch
from official_format import randomize_, to_training_checkpoint

import vil
from vil import VARIANTS, WeightsDownloadError
from vil.weights.timm_registry import register_timm_models

REPO = Path(__file__).resolve().parents[1]
NAME = "vil1_tiny_patch16_224"  # the smallest released architecture (6.1 M parameters)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A stand-in for a released file of vil1_tiny_patch16_224: random weights in the official file format."""
    torch.manual_seed(0)
    model = randomize_(vil.create_model(NAME).eval())
    path = tmp_path_factory.mktemp("released") / "vil_tiny16_e800_in1k.th"
    torch.save(to_training_checkpoint(model), path)
    return path, model


def assert_same_weights(model, reference, skip_head=False):
    state = model.state_dict()
    for key, value in reference.state_dict().items():
        if not (skip_head and key.startswith("head.")):
            assert torch.equal(state[key], value), key


def small_image():
    return torch.randn(1, 3, 32, 32)  # any size the patch tiles works: the position embedding is resampled


def test_pretrained_path_loads_the_named_variant(released):
    path, reference = released
    model = vil.create_model(NAME, pretrained=path)
    assert model.config == reference.config
    assert_same_weights(model, reference)


def test_with_a_name_the_files_classes_and_image_size_stay(released, tmp_path):
    path, _ = released
    fine_tuned = vil.load_official(path, num_classes=10, img_size=256)  # as if fine-tuned on 10 classes at 256
    vil.save_pretrained(fine_tuned, tmp_path / "fine_tuned.safetensors")
    model = vil.create_model(NAME, pretrained=tmp_path / "fine_tuned.safetensors")
    assert model.config == fine_tuned.config
    assert_same_weights(model, fine_tuned)


def test_the_requested_architecture_decides_the_stride(released, caplog):
    """As the official hub, whose stride-8 ViL-T+ loads the stride-16 file: the stride has no tensors."""
    path, reference = released
    with caplog.at_level(logging.INFO, logger="vil"):
        model = vil.create_model(reference.config.replace(patch_stride=8), pretrained=path)
    assert model.config.patch_stride == (8, 8) and "'patch_stride': (8, 8)" in caplog.text
    assert_same_weights(model, reference)


def test_pretrained_true_downloads_through_torch_hub(released, monkeypatch):
    path, reference = released
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return torch.load(path, weights_only=True, map_location="cpu")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = vil.create_model(NAME, pretrained=True, num_classes=10)
    assert calls == [(VARIANTS[NAME].checkpoint().url, dict(weights_only=True, map_location="cpu"))]
    assert model.num_classes == 10
    assert_same_weights(model, reference, skip_head=True)

    vil.create_model(f"{NAME}.in1k_e400", pretrained=True)  # a tag picks another released checkpoint
    assert calls[-1][0] == "https://ml.jku.at/research/vision_lstm/download/vil_tiny16_e400_in1k.th"


def test_failed_download_says_how_to_use_a_local_file(monkeypatch):
    def no_network(url, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsDownloadError) as error:
        vil.create_model("vil2_small_patch16_224", pretrained=True)
    message = str(error.value)
    assert "https://ml.jku.at/research/vision_lstm/download/vil2_small16_e400_in1k.th" in message
    assert 'vil.create_model("vil2_small_patch16_224", pretrained="path/to/vil2_small16_e400_in1k.th")' in message
    assert 'vil.load_official("path/to/vil2_small16_e400_in1k.th")' in message


def test_timm_pretrained_offline_gets_the_same_help(monkeypatch):
    import timm.models._builder

    def no_network(url, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsDownloadError) as error:
        timm.create_model("vil2_tiny_patch16_224", pretrained=True)
    message = str(error.value)
    assert "could not download the released weights of vil2_tiny_patch16_224 (in1k)" in message
    assert 'vil.create_model("vil2_tiny_patch16_224", pretrained="path/to/vil2_tiny16_e800_in1k.th")' in message
    with pytest.raises(WeightsDownloadError, match=r"\(in1k_e400\) from .*/vil2_tiny16_e400_in1k.th"):
        timm.create_model("vil2_tiny_patch16_224.in1k_e400", pretrained=True)


def test_pretrained_argument_errors():
    with pytest.raises(ValueError, match="pretrained=True needs a model name"):
        vil.create_model(vil.ViLConfig(dim=16, depth=2), pretrained=True)
    with pytest.raises(ValueError, match=r"has no checkpoint tagged 'in22k'; its tags: \['in1k', 'in1k_e400'\]"):
        vil.create_model("vil2_tiny_patch16_224.in22k")
    with pytest.raises(ValueError, match="pretrained must be True, False or a file path"):
        vil.create_model("vil2_tiny_patch16_224", pretrained=3)


# ----------------------------------------------------------------------------------------------------------------
# torch.hub


def load_hubconf():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_has_one_entry_point_per_variant():
    hubconf = load_hubconf()
    entry_points = sorted(
        name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")
    )
    assert entry_points == sorted(VARIANTS)  # what torch.hub.list reports
    assert hubconf.dependencies == ["torch", "timm", "safetensors"]
    assert "ViL-T (VisionLSTM2)" in hubconf.vil2_tiny_patch16_224.__doc__


def test_torch_hub_load_from_the_local_repository(released):
    path, reference = released
    model = torch.hub.load(str(REPO), "vil2_tiny_patch16_224", source="local", num_classes=7)
    assert isinstance(model, vil.VisionLSTM) and model.config.dim == 192 and model.num_classes == 7
    model = torch.hub.load(str(REPO), NAME, source="local", pretrained=str(path))
    assert_same_weights(model, reference)


# ----------------------------------------------------------------------------------------------------------------
# timm


def test_every_variant_is_registered_with_timm():
    assert timm.list_models("vil*") == sorted(VARIANTS)
    assert "vil2_tiny_patch16_224.in1k_e400" in timm.list_pretrained("vil2_tiny*")
    assert register_timm_models() == []  # registering again is a no-op


def test_timm_create_model_builds_the_variant():
    model = timm.create_model("vil2_tiny_patch16_224", pretrained=False, num_classes=10)
    assert isinstance(model, vil.VisionLSTM) and model.config.dim == 192 and model.config.depth == 24
    assert model.pretrained_cfg["url"].endswith("vil2_tiny16_e800_in1k.th")
    with torch.no_grad():
        assert model(small_image()).shape == (1, 10)


def test_timm_pretrained_converts_the_official_file(released):
    path, reference = released
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert_same_weights(model, reference)
    x = small_image()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x))
    tuned = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10)
    assert tuned.num_classes == 10
    assert_same_weights(tuned, reference, skip_head=True)


def test_timm_features_only():
    model = timm.create_model("vil1_tiny_patch16_224", features_only=True, out_indices=(3, 11))
    with torch.no_grad():
        maps = model(small_image())
    assert [tuple(m.shape) for m in maps] == [(1, 192, 2, 2)] * 2

"""Round trips official -> ours -> safetensors -> ours, and the overrides applied when loading weights."""

import logging

import pytest
import torch
from official_format import to_official_module_state_dict, to_training_checkpoint
from test_convert import ARCHITECTURES, MODULE_ARCHITECTURES, make_model

import vil
from vil.weights.vil_format import CONFIG_KEY, read_config


def assert_same_weights(model, reference):
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def image_for(config, batch=2):
    return torch.randn(batch, config.in_chans, *config.img_size)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_round_trip_official_ours_safetensors_ours_is_exact(name, tmp_path):
    original = make_model(ARCHITECTURES[name])
    torch.save(to_training_checkpoint(original), tmp_path / "official.th")
    converted = vil.load_official(tmp_path / "official.th").eval()
    assert converted.config == original.config
    assert_same_weights(converted, original)

    vil.save_pretrained(converted, tmp_path / "ours.safetensors")
    assert read_config(tmp_path / "ours.safetensors") == original.config
    for reloaded in (
        vil.load_pretrained(tmp_path / "ours.safetensors"),
        vil.create_model(original.config, pretrained=tmp_path / "ours.safetensors"),
        vil.create_model(original.config, pretrained=str(tmp_path / "official.th")),
    ):
        assert reloaded.config == original.config
        assert_same_weights(reloaded, original)
    x = image_for(original.config)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), original(x))


@pytest.mark.parametrize("name", sorted(MODULE_ARCHITECTURES))
def test_state_dict_of_the_official_modules_loads_with_its_stride(name, tmp_path):
    original = make_model(MODULE_ARCHITECTURES[name])
    torch.save(to_official_module_state_dict(original), tmp_path / "module.th")
    # a plain state dict does not record the stride: it is an override
    loaded = vil.load_official(tmp_path / "module.th", patch_stride=original.config.patch_stride)
    assert loaded.config == original.config
    assert_same_weights(loaded, original)


def test_img_size_override_resamples_the_position_embedding(tmp_path):
    original = make_model(ARCHITECTURES["v2_nonsquare"])  # 16 x 24 pixels, patch 4: a 4 x 6 grid
    vil.save_pretrained(original, tmp_path / "ours.safetensors")
    bigger = vil.load_pretrained(tmp_path / "ours.safetensors", img_size=(32, 20)).eval()
    assert bigger.config.img_size == (32, 20) and bigger.pos_embed.grid == (8, 5)
    x = torch.randn(1, 3, 32, 20)
    with torch.no_grad():  # resampling once at load equals the on-the-fly resampling of the original model
        torch.testing.assert_close(bigger(x), original(x), rtol=1e-6, atol=1e-6)


def test_num_classes_override_replaces_the_head_and_says_so(tmp_path, caplog):
    original = make_model(ARCHITECTURES["v1_stride"])  # 3 classes
    torch.save(to_training_checkpoint(original), tmp_path / "official.th")
    with caplog.at_level(logging.INFO, logger="vil"):
        model = vil.load_official(tmp_path / "official.th", num_classes=11)
    assert "head for 3 classes is replaced by a freshly initialised head for 11 classes" in caplog.text
    assert model.head.weight.shape == (11, original.config.dim)
    for key, value in original.state_dict().items():  # everything but the head is the checkpoint's
        if not key.startswith("head."):
            assert torch.equal(model.state_dict()[key], value), key
    features = vil.load_official(tmp_path / "official.th", num_classes=0)
    assert isinstance(features.head, torch.nn.Identity)


def test_backend_overrides_change_the_cell_not_the_outputs(tmp_path):
    original = make_model(ARCHITECTURES["v1_quad"])
    vil.save_pretrained(original, tmp_path / "ours.safetensors")
    chunked = vil.load_pretrained(tmp_path / "ours.safetensors", mlstm_backend="chunkwise", chunk_size=2).eval()
    assert chunked.config.mlstm_backend == "chunkwise" and chunked.config.chunk_size == 2
    x = image_for(original.config)
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), original(x), rtol=1e-5, atol=1e-5)


def test_overrides_that_change_tensor_shapes_are_refused(tmp_path):
    original = make_model(ARCHITECTURES["v1_stride"])
    torch.save(to_training_checkpoint(original), tmp_path / "official.th")
    with pytest.raises(ValueError, match=r"cannot override \['dim'\].*allowed overrides"):
        vil.load_official(tmp_path / "official.th", dim=32)


def test_save_pretrained_stores_the_config_and_extra_metadata(tmp_path):
    from safetensors import safe_open

    model = make_model(ARCHITECTURES["v2_mean"])
    vil.save_pretrained(model, tmp_path / "ours.safetensors", metadata={"note": "test"})
    with safe_open(str(tmp_path / "ours.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["note"] == "test" and metadata["format"] == "vil" and CONFIG_KEY in metadata


def test_feature_extractor_checkpoint_gets_a_fresh_norm_after_pooling(tmp_path, caplog):
    original = make_model(ARCHITECTURES["v2_no_head"])
    checkpoint = to_training_checkpoint(original)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("head.0.")}
    torch.save(checkpoint, tmp_path / "features.th")
    with caplog.at_level(logging.INFO, logger="vil"):
        model = vil.load_official(tmp_path / "features.th").eval()
    assert "no LayerNorm after pooling (a feature extractor): fc_norm is freshly initialised" in caplog.text
    x = image_for(original.config)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), original.forward_features(x), rtol=0, atol=0)


def test_a_given_config_decides_image_size_and_classes(tmp_path, caplog):
    original = make_model(ARCHITECTURES["v1_stride"])  # 16 x 16 pixels, 3 classes
    vil.save_pretrained(original, tmp_path / "ours.safetensors")
    wanted = original.config.replace(img_size=24, num_classes=9, mlstm_backend="recurrent")
    with caplog.at_level(logging.INFO, logger="vil"):
        model = vil.create_model(wanted, pretrained=tmp_path / "ours.safetensors")
    assert model.config == wanted and "head for 3 classes is replaced" in caplog.text
    assert vil.load_pretrained(tmp_path / "ours.safetensors").config.num_classes == 3  # the file's

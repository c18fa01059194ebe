"""vil.weights.convert: key mapping and architecture inference, on official-format state dicts of many architectures."""

import pytest
import torch
from official_format import randomize_, to_official_module_state_dict, to_training_checkpoint

from vil import ViLConfig, VisionLSTM
from vil.layers.traversal import BLOCK_DESIGNS
from vil.weights.convert import (
    OFFICIAL_V1,
    OFFICIAL_V2,
    TRAINING,
    VIL,
    convert_checkpoint,
    describe_architecture,
    detect_layout,
    official_v1_key_to_vil,
    official_v2_key_to_vil,
    training_key_to_vil,
)

# Tiny architectures that differ in everything the inference reads: width, depth, patch (non-square too), stride,
# image size (non-square), generation, every block design and pooling, classes (0 too), expansion, input channels.
ARCHITECTURES = {
    "v2_nonsquare": ViLConfig(version=2, dim=32, depth=4, img_size=(16, 24), patch_size=4, num_classes=5),
    "v1_nonsquare_patch": ViLConfig(version=1, dim=24, depth=3, img_size=(8, 16), patch_size=(2, 4), num_classes=7),
    "v1_stride": ViLConfig(version=1, dim=16, depth=2, img_size=16, patch_size=4, patch_stride=2, num_classes=3),
    "v2_stride_nonsquare": ViLConfig(
        version=2, dim=16, depth=2, img_size=(16, 12), patch_size=4, patch_stride=(2, 4), num_classes=3
    ),
    "v2_no_head": ViLConfig(version=2, dim=16, depth=2, img_size=8, patch_size=4, num_classes=0),
    "v1_expansion3_gray": ViLConfig(version=1, dim=16, depth=2, img_size=8, patch_size=4, expansion=3, in_chans=1),
    "v2_mean": ViLConfig(version=2, dim=16, depth=2, img_size=8, patch_size=4, pooling="mean", num_classes=4),
    "v2_bilateral_avg": ViLConfig(version=2, dim=16, depth=2, img_size=8, patch_size=4, pooling="bilateral_avg"),
    "v1_middle_cls": ViLConfig(version=1, dim=16, depth=2, img_size=(8, 12), patch_size=4, pooling="middle_cls"),
    "v1_middle_patch": ViLConfig(version=1, dim=16, depth=2, img_size=8, patch_size=4, pooling="middle_patch"),
    "v2_bidirectional": ViLConfig(version=2, dim=16, depth=2, img_size=8, patch_size=4, block_design="bidirectional"),
    "v2_quad": ViLConfig(version=2, dim=16, depth=2, img_size=(8, 12), patch_size=4, block_design="quad"),
    **{
        f"v1_{design}": ViLConfig(
            version=1,
            dim=16,
            depth=4,
            img_size=(8, 12),
            patch_size=4,
            block_design=design,
            pooling="last" if design == "unidirectional" else None,
            num_classes=6,
        )
        for design in BLOCK_DESIGNS
    },
}
# what the standalone VisionLSTM / VisionLSTM2 modules can hold: the alternating design
MODULE_ARCHITECTURES = {
    name: config
    for name, config in ARCHITECTURES.items()
    if config.block_design == "alternating" and config.pooling in ("bilateral_concat", "bilateral_avg")
}


def make_model(config: ViLConfig, seed: int = 0) -> VisionLSTM:
    torch.manual_seed(seed)
    return randomize_(VisionLSTM(config).eval(), seed)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_training_layout_is_converted_exactly(name):
    model = make_model(ARCHITECTURES[name])
    converted = convert_checkpoint(to_training_checkpoint(model), source=name)
    assert converted.layout == TRAINING
    assert converted.config == model.config
    assert converted.assumptions == {}  # ctor_kwargs record everything the tensors do not show
    expected = model.state_dict()
    assert converted.state_dict.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(converted.state_dict[key], value), key


@pytest.mark.parametrize("name", sorted(MODULE_ARCHITECTURES))
def test_module_layout_is_converted_exactly(name):
    model = make_model(MODULE_ARCHITECTURES[name])
    converted = convert_checkpoint(to_official_module_state_dict(model), source=name)
    assert converted.layout == (OFFICIAL_V2 if model.config.version == 2 else OFFICIAL_V1)
    # a plain state dict records no stride: the patch size is assumed (and said), everything else is read
    assert converted.config == model.config.replace(patch_stride=model.config.patch_size)
    assert "patch_stride" in converted.assumptions
    assert converted.state_dict.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict[key], value), key


def test_plain_training_state_dict_without_ctor_kwargs_assumes_what_no_tensor_shows():
    config = ARCHITECTURES["v1_stride"]  # bilateral avg: its pooled width D fits several designs
    state_dict = to_training_checkpoint(make_model(config))["state_dict"]
    converted = convert_checkpoint(state_dict)
    assert converted.config == config.replace(patch_stride=None)
    assert set(converted.assumptions) == {"patch_stride", "block_design", "pooling"}


@pytest.mark.parametrize("design, branches", [("bidirectional", 2), ("quad", 4)])
def test_plain_state_dict_design_follows_the_number_of_branches(design, branches):
    config = ARCHITECTURES[f"v1_{design}"]
    converted = convert_checkpoint(to_training_checkpoint(make_model(config))["state_dict"])
    assert converted.config.block_design == design
    assert "block_design" not in converted.assumptions
    assert f"blocks.0.layer.branches.{branches - 1}.q_proj.weight" in converted.state_dict


def test_training_keys_map_to_ours():
    assert training_key_to_vil("xlstm.blocks.3.xlstm_norm.weight") == "blocks.3.norm.weight"
    assert training_key_to_vil("xlstm.blocks.3.xlstm.proj_up.bias") == "blocks.3.layer.proj_up.bias"
    assert training_key_to_vil("xlstm.blocks.0.xlstm.conv1d.weight") == "blocks.0.layer.branches.0.conv.weight"
    assert (
        training_key_to_vil("xlstm.blocks.0.xlstm.conv1d.conv.weight") == "blocks.0.layer.branches.0.conv.conv.weight"
    )
    assert training_key_to_vil("xlstm.blocks.1.xlstm.q_proj_rev.weight") == "blocks.1.layer.branches.1.q_proj.weight"
    assert training_key_to_vil("xlstm.blocks.1.xlstm.conv1d_du.conv.bias") == "blocks.1.layer.branches.2.conv.conv.bias"
    assert (
        training_key_to_vil("xlstm.blocks.2.xlstm.mlstm_cell_ud.outnorm.weight")
        == "blocks.2.layer.branches.3.mlstm_cell.outnorm.weight"
    )
    assert training_key_to_vil("xlstm.blocks.2.xlstm.learnable_skip_ud") == "blocks.2.layer.branches.3.learnable_skip"
    assert training_key_to_vil("xlstm.post_blocks_norm.weight") == "norm.weight"
    assert training_key_to_vil("head.0.bias") == "fc_norm.bias"
    assert training_key_to_vil("head.1.weight") == "head.weight"
    assert training_key_to_vil("cls_tokens.tokens") == "cls_token"
    assert training_key_to_vil("xlstm.blocks.0.xlstm.mlstm_cell.causal_mask") is None  # legacy buffer
    # what has no counterpart keeps its name, so that loading lists it as unexpected
    assert training_key_to_vil("xlstm.blocks.0.xlstm.layerscale.gamma") == "xlstm.blocks.0.xlstm.layerscale.gamma"
    assert training_key_to_vil("xlstm.blocks.0.xlstm.conv1d_k.weight") == "xlstm.blocks.0.xlstm.conv1d_k.weight"


def test_official_module_keys_map_to_ours():
    assert (
        official_v2_key_to_vil("blocks.5.rowwise_from_top_left.layer.conv.weight")
        == "blocks.10.layer.branches.0.conv.weight"
    )
    assert official_v2_key_to_vil("blocks.5.rowwise_from_bot_right.norm.bias") == "blocks.11.norm.bias"
    assert official_v2_key_to_vil("blocks.0.rowwise_from_bot_right.layer.proj_down.weight") == (
        "blocks.1.layer.proj_down.weight"
    )
    assert official_v2_key_to_vil("norm.weight") == "norm.weight"
    assert official_v2_key_to_vil("legacy_norm.weight") == "fc_norm.weight"
    assert official_v1_key_to_vil("blocks.2.layer.conv1d.conv.weight") == "blocks.2.layer.branches.0.conv.conv.weight"
    assert (
        official_v1_key_to_vil("blocks.2.layer.mlstm_cell.fgate.bias")
        == "blocks.2.layer.branches.0.mlstm_cell.fgate.bias"
    )
    assert official_v1_key_to_vil("legacy_norm.weight") == "norm.weight"
    assert official_v1_key_to_vil("norm.bias") == "fc_norm.bias"
    assert official_v1_key_to_vil("head.weight") == "head.weight"


def test_layouts_are_detected():
    model = make_model(ARCHITECTURES["v2_nonsquare"])
    assert detect_layout(model.state_dict()) == VIL
    assert detect_layout(to_training_checkpoint(model)["state_dict"]) == TRAINING
    assert detect_layout(to_official_module_state_dict(model)) == OFFICIAL_V2
    assert detect_layout(to_official_module_state_dict(make_model(ARCHITECTURES["v1_stride"]))) == OFFICIAL_V1
    assert detect_layout({"conv1.weight": torch.zeros(1)}) is None


def test_our_own_names_are_accepted():
    model = make_model(ARCHITECTURES["v1_quad"])
    converted = convert_checkpoint(model.state_dict())
    assert converted.layout == VIL and converted.config == model.config.replace(patch_stride=None)


def test_describe_architecture():
    text = describe_architecture(ARCHITECTURES["v2_stride_nonsquare"])
    assert text == (
        "ViL v2, dim 16, 2 mLSTM blocks, patch 4 stride 2x4, image 16x12, 3 classes, pooling bilateral_concat, "
        "block design alternating"
    )


def test_the_module_class_decides_the_generation():
    """VisionLSTM2 with a causal 1-D conv is still VisionLSTM2 (its final norms differ from v1's in eps)."""
    config = ViLConfig(version=2, dim=16, depth=2, img_size=8, patch_size=4, conv_kind="causal1d", conv_kernel_size=4)
    model = make_model(config)
    assert convert_checkpoint(to_official_module_state_dict(model)).config == config
    # the training code has one set of final norms for both convs: the conv decides there
    assert convert_checkpoint(to_training_checkpoint(model)).config.version == 1

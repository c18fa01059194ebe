"""The segmenter: shapes at any size, the official structure (taps, pyramid, parameter counts), backbone init."""

from pathlib import Path

import pytest
import torch

import vil
from vil.seg import SegmenterConfig, create_segmenter
from vil.seg.config import default_taps
from vil.seg.neck import SimpleFeaturePyramid
from vil.weights.classifier import load_classifier

OFFICIAL = Path(__file__).parent / "data" / "official"
TINY = dict(dim=32, depth=4, patch_size=4, taps=(0, 1, 2, 3), pyramid_scales=(4, 2, 1, 0.5), channels=16,
            aux_channels=8)  # fmt: skip


def test_logits_at_the_input_resolution_for_any_size_the_patch_tiles():
    model = create_segmenter("vil2_tiny_patch16_224", 5, img_size=32, **TINY).eval()
    for size in [(32, 32), (48, 80)]:
        logits = model(torch.randn(2, 3, *size))
        assert logits.shape == (2, 5, *size)
    model.train()
    logits, aux = model(torch.randn(2, 3, 32, 48), with_aux=True)
    assert logits.shape == aux.shape == (2, 5, 32, 48)
    with pytest.raises(ValueError, match="does not fit patch size"):
        model(torch.randn(1, 3, 30, 32))


def test_the_linear_head_classifies_each_tokens_pixels():
    model = create_segmenter("vil2_tiny_patch16_224", 5, head="linear", img_size=32, dim=32, depth=4, patch_size=4)
    logits, aux = model(torch.randn(2, 3, 32, 48), with_aux=True)
    assert logits.shape == (2, 5, 32, 48) and aux is None and model.neck is None
    assert (model.decode_head.proj.in_channels, model.decode_head.proj.out_channels) == (4 * 32, 5 * 4 * 4)


def test_a_timm_backbone_gets_the_same_neck_and_head():
    model = create_segmenter("deit_tiny_patch16_224", 7, img_size=64, channels=16, aux_channels=8, depth=4,
                             embed_dim=48, num_heads=3, taps=(0, 1, 2, 3)).eval()  # fmt: skip
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 7, 64, 96)  # another size than built: pos embed resampled
    assert [type(m).__name__ for m in model.neck.levels] == ["Sequential", "ConvTranspose2d", "Identity", "MaxPool2d"]
    with pytest.raises(ValueError, match="unknown backbone 'resnet_nonexistent'"):
        create_segmenter("resnet_nonexistent", 3)


def test_official_taps_and_pyramids():
    assert default_taps(24) == (7, 11, 15, 23)
    assert default_taps(12) == (3, 5, 7, 11)
    with torch.device("meta"):
        stride8 = create_segmenter("vil1_tinyplus_patch16_stride8_224", 150)
    assert stride8.neck.scales == (2.0, 1.0, 0.5, 0.25)
    assert stride8.taps == (9, 13, 18, 28)
    pyramid = SimpleFeaturePyramid(8, (4, 2, 1, 0.5))
    levels = pyramid([torch.randn(1, 8, 6, 6)] * 4)
    assert [tuple(x.shape[-2:]) for x in levels] == [(24, 24), (12, 12), (6, 6), (3, 3)]


# Without the auxiliary head, 150 classes, 512 px (paper: 11M / 42M / 115M and 10M / 41M / 113M).
PARAMS = {
    "vil2_tiny_patch16_224": 10_880_598, "vil2_small_patch16_224": 41_741_142, "vil2_base_patch16_224": 114_823_254,
    "deit_tiny_patch16_224": 10_399_254, "deit_small_patch16_224": 40_778_646, "deit_base_patch16_224": 112_898_454,
}  # fmt: skip


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_counts_match_the_paper(name):
    with torch.device("meta"):
        model = create_segmenter(name, 150)
    assert model.count_parameters() == PARAMS[name]
    assert model.count_parameters(aux=True) > PARAMS[name]
    # the backbone is cut after its last tap: no final norm and no classification head
    assert not hasattr(model.backbone, "head") or isinstance(model.backbone.head, torch.nn.Identity)


def test_drop_path_decays_linearly_over_depth():
    model = create_segmenter("vil2_tiny_patch16_224", 3, img_size=32, drop_path_rate=0.3, **TINY)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.backbone.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize("kind", ["official", "safetensors", "run"])
def test_backbone_from_classification_weights_with_the_position_embedding_resampled(tmp_path, kind):
    official = OFFICIAL / "vil2_dim64_pairs2_32px_p4.th"
    source = load_classifier(official).model
    if kind == "official":
        path = official
    elif kind == "safetensors":
        path = vil.save_pretrained(source, tmp_path / "m.safetensors")
    else:  # a run directory holding the final weights
        path = tmp_path / "run"
        vil.save_pretrained(source, path / "model_final.safetensors")
    model = create_segmenter("vil2_tiny_patch16_224", 4, pretrained=path, img_size=64, dim=64, depth=4,
                             patch_size=4, taps=(0, 1, 2, 3), pyramid_scales=(4, 2, 1, 0.5), channels=16)  # fmt: skip
    block = "blocks.3.layer.proj_up.weight"
    assert torch.equal(model.backbone.state_dict()[block], source.state_dict()[block])
    assert model.backbone.pos_embed.embed.shape == (1, 16, 16, 64)  # 32 px / 4 -> 8 x 8 resampled to 64 px / 4
    with pytest.raises(ValueError, match="dim"):  # another architecture than the weights
        create_segmenter("vil2_tiny_patch16_224", 4, pretrained=official, img_size=64, patch_size=4)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="pyramid_scales"):
        SegmenterConfig(pyramid_scales=(3, 2, 1, 0.5))
    with pytest.raises(ValueError, match="unknown head"):
        SegmenterConfig(head="fpn")
    with pytest.raises(ValueError, match="taps"):
        create_segmenter("vil2_tiny_patch16_224", 3, img_size=32, **{**TINY, "taps": (0, 1, 2, 9)})

"""The ViL model: variants, designs, poolings, any image size, timm's API, errors."""

import pytest
import torch

import vil
from vil import ViLConfig, VisionLSTM, create_model, list_models
from vil.layers.pooling import POOLINGS
from vil.layers.traversal import BLOCK_DESIGNS

# Exact parameter counts at 224 x 224 with 1000 classes (docs/design.md §3; strided = their twins).
PARAM_COUNTS = {
    "vil2_tiny_patch16_224": 6_391_528,
    "vil2_small_patch16_224": 23_398_696,
    "vil2_base_patch16_224": 89_263_528,
    "vil1_tiny_patch16_224": 6_088_360,
    "vil1_tinyplus_patch16_224": 7_277_840,
    "vil1_small_patch16_224": 22_792_360,
    "vil1_smallplus_patch16_224": 24_628_664,
    "vil1_base_patch16_224": 88_050_856,
    "vil1_tinyplus_patch16_stride8_224": 7_277_840,
    "vil1_smallplus_patch16_stride8_224": 24_628_664,
    "vil1_base_patch16_stride8_224": 88_050_856,
}


def tiny(**overrides) -> VisionLSTM:
    """A small ViL for fast tests: dim 32, 4 mLSTM blocks, patch 4, 10 classes."""
    config = dict(dim=32, depth=4, patch_size=4, img_size=16, num_classes=10) | overrides
    return VisionLSTM(ViLConfig(**config))


def test_list_models_has_all_eleven_names():
    assert list_models() == sorted(PARAM_COUNTS)
    assert list_models("vil2_*") == ["vil2_base_patch16_224", "vil2_small_patch16_224", "vil2_tiny_patch16_224"]


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts_match_the_paper(name):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_every_variant_classifies_small_and_non_square_images(name):
    # dim/depth shrunk to keep the test fast; everything else (generation, patch, stride, pooling) is the variant's
    model = create_model(name, dim=16, depth=2).eval()
    with torch.no_grad():
        for size in [(32, 32), (48, 32)]:
            assert model(torch.randn(2, 3, *size)).shape == (2, 1000)


def test_stride8_variant_has_729_tokens_at_224_with_a_14x14_position_embedding():
    model = create_model("vil1_tinyplus_patch16_stride8_224", dim=16, depth=1).eval()
    assert model.pos_embed.grid == (14, 14)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 729, 16)


@pytest.mark.parametrize("design", list(BLOCK_DESIGNS))
@pytest.mark.parametrize("version", [1, 2])
def test_every_block_design_at_several_sizes(design, version):
    model = tiny(block_design=design, version=version).eval()
    with torch.no_grad():
        for size in [(16, 16), (8, 24), (20, 12)]:
            assert model(torch.randn(2, 3, *size)).shape == (2, 10)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("version", [1, 2])
def test_every_pooling_at_several_sizes(pooling, version):
    model = tiny(pooling=pooling, version=version, block_design="quad_alternating").eval()
    with torch.no_grad():
        for size in [(16, 16), (12, 20), (4, 4)]:
            x = torch.randn(2, 3, *size)
            assert model(x).shape == (2, 10)
            features = model.forward_features(x)
            num_tokens = (size[0] // 4) * (size[1] // 4) + (pooling == "middle_cls")
            assert features.shape == (2, num_tokens, 32)
            width = 64 if pooling == "bilateral_concat" else 32
            assert model.forward_head(features, pre_logits=True).shape == (2, width)


def test_parameter_count_of_designs_follows_their_branches():
    counts = {d: sum(p.numel() for p in tiny(block_design=d).parameters()) for d in BLOCK_DESIGNS}
    assert counts["alternating"] == counts["unidirectional"] == counts["quad_alternating"]
    assert counts["bidirectional_shared"] == counts["quad_shared"] == counts["alternating"]
    assert counts["alternating"] < counts["bidirectional"] < counts["quad"]


def test_generation_defaults():
    v1, v2 = ViLConfig(version=1), ViLConfig(version=2)
    assert (v1.conv_kind, v1.conv_kernel_size, v1.bias, v1.pooling) == ("causal1d", 4, False, "bilateral_avg")
    assert (v2.conv_kind, v2.conv_kernel_size, v2.bias, v2.pooling) == ("2d", 3, True, "bilateral_concat")


def test_traversal_designs_differ_in_what_they_compute():
    x = torch.randn(1, 3, 16, 16)
    outputs = {}
    for design in BLOCK_DESIGNS:
        torch.manual_seed(0)
        with torch.no_grad():
            outputs[design] = tiny(block_design=design).eval()(x)
    assert not torch.allclose(outputs["alternating"], outputs["unidirectional"])
    assert not torch.allclose(outputs["alternating"], outputs["quad_alternating"])


def test_unidirectional_model_is_causal_in_the_row_major_order():
    model = tiny(block_design="unidirectional", version=1, pooling="last").eval()
    x = torch.randn(1, 3, 16, 16)
    y = x.clone()
    y[..., 12:, 12:] += 1.0  # change only the last patch (bottom-right)
    with torch.no_grad():
        fx, fy = model.forward_features(x), model.forward_features(y)
    assert torch.allclose(fx[:, :-1], fy[:, :-1], atol=1e-6)  # v1 conv is causal: earlier tokens unchanged
    assert not torch.allclose(fx[:, -1], fy[:, -1])


def test_position_embedding_is_resampled_for_other_sizes():
    model = tiny(img_size=16).eval()
    features = model.forward_features(torch.randn(1, 3, 32, 8))
    assert features.shape == (1, 16, 32)  # 8 x 2 tokens from a 4 x 4 embedding


def test_residual_stream_is_contiguous_so_norms_read_it_in_place():
    # a strided token layout (the conv's channels-first output, permuted) would carry through every residual add
    # and make each block's layer norm copy its input
    model = tiny().eval()
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        model.forward_features(torch.randn(2, 3, 32, 32))
    assert seen == [True]


def test_gradients_reach_every_parameter(recompute_mode):
    for design, pooling in [("alternating", "middle_cls"), ("quad", "bilateral_concat"), ("bidirectional", "mean")]:
        model = tiny(block_design=design, pooling=pooling, drop_path_rate=0.1)
        model(torch.randn(2, 3, 16, 12)).square().sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, (design, missing)


def test_recomputing_paths_give_the_same_gradients(monkeypatch):
    import vil.ops.projected

    x = torch.randn(2, 3, 16, 12)
    grads = {}
    for design in ("alternating", "bidirectional"):
        for threshold in (0, 2**62):
            monkeypatch.setattr(vil.ops.projected, "RECOMPUTE_MIN_ELEMENTS", threshold)
            for backend in ("parallel", "chunkwise"):
                torch.manual_seed(0)
                model = tiny(block_design=design, mlstm_backend=backend, chunk_size=5)
                model(x).square().sum().backward()
                grads[design, threshold, backend] = [p.grad for p in model.parameters()]
        for backend in ("parallel", "chunkwise"):
            for lean, plain in zip(grads[design, 0, backend], grads[design, 2**62, backend], strict=True):
                torch.testing.assert_close(lean, plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["parallel", "chunkwise", "recurrent"])
def test_backends_give_the_same_model_output(backend):
    model = tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference = model(x)
        model.set_mlstm_backend(backend, chunk_size=5)
        assert torch.allclose(model(x), reference, atol=1e-5)


def test_forward_intermediates_gives_feature_maps_for_dense_tasks():
    model = tiny(pooling="middle_cls").eval()
    x = torch.randn(2, 3, 16, 24)
    final, maps = model.forward_intermediates(x, indices=[0, -1])
    assert final.shape == (2, 4 * 6 + 1, 32)
    assert [m.shape for m in maps] == [(2, 32, 4, 6)] * 2
    only = model.forward_intermediates(x, indices=2, output_fmt="NHWC", intermediates_only=True, norm=True)
    assert [m.shape for m in only] == [(2, 4, 6, 32)] * 2
    with torch.no_grad():
        assert torch.allclose(only[-1].flatten(1, 2), torch.cat([final[:, :12], final[:, 13:]], 1), atol=1e-6)


def test_reset_classifier_and_no_head():
    model = tiny()
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    model.reset_classifier(0, global_pool="mean")
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 32)
    assert tiny(num_classes=0)(torch.randn(1, 3, 16, 16)).shape == (1, 64)


def test_grad_checkpointing_gives_the_same_gradients(recompute_mode):
    model = tiny()
    x = torch.randn(2, 3, 16, 16)
    model(x).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    for p, g in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_timm_helpers():
    model = tiny()
    assert model.no_weight_decay() >= {"pos_embed.embed"}
    matcher = model.group_matcher()
    assert set(matcher) == {"stem", "blocks"}
    assert model.get_classifier() is model.head


def test_init_original_fixed_scales_proj_down_by_depth():
    torch.manual_seed(0)
    original = tiny(dim=64, depth=8).blocks[0].layer.proj_down.weight.std().item()
    fixed = tiny(dim=64, depth=8, init="original-fixed").blocks[0].layer.proj_down.weight.std().item()
    assert original == pytest.approx(2 / 8, rel=0.1)
    assert fixed == pytest.approx(2 / 8 / 8, rel=0.1)


class TestBadInput:
    def test_unknown_model_name_lists_the_valid_names(self):
        with pytest.raises(ValueError, match="unknown model 'vil3_tiny'.*vil2_tiny_patch16_224"):
            create_model("vil3_tiny")

    def test_wrong_channel_count(self):
        with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
            tiny()(torch.randn(1, 1, 16, 16))

    def test_size_the_patch_does_not_divide(self):
        with pytest.raises(ValueError, match=r"image size \(18, 16\).*patch size \(4, 4\)"):
            tiny()(torch.randn(1, 3, 18, 16))
        with pytest.raises(ValueError, match="image size"):
            ViLConfig(img_size=225)

    def test_headwise_blocks_that_would_straddle_two_heads(self):
        with pytest.raises(ValueError, match="head width expansion.dim/num_heads = 10 must be divisible by qkv_bl"):
            ViLConfig(dim=20, num_heads=4)

    def test_not_an_image_batch(self):
        with pytest.raises(ValueError, match="expected images of shape"):
            tiny()(torch.randn(3, 16, 16))

    def test_uint8_pixels_are_refused_with_what_to_do(self):
        with pytest.raises(ValueError, match="expected floating-point images, got dtype torch.uint8: scale and"):
            tiny()(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))

    def test_unknown_keywords_name_the_key_and_the_fields(self):
        with pytest.raises(ValueError, match="unknown ViLConfig field 'foo'; fields: version, dim, depth"):
            vil.create_model("vil2_tiny_patch16_224", foo=1)
        with pytest.raises(ValueError, match="unknown ViLConfig fields 'bar', 'foo'"):
            ViLConfig().replace(foo=1, bar=2)

    @pytest.mark.parametrize(
        "field,value,message",
        [
            ("block_design", "spiral", "unknown block_design 'spiral'"),
            ("pooling", "max", "unknown pooling 'max'"),
            ("mlstm_backend", "cuda", "unknown mlstm_backend"),
            ("init", "xavier", "unknown init"),
            ("version", 3, "version must be 1 or 2"),
            ("dim", 0, "dim must be a positive int"),
            ("num_classes", -1, "num_classes"),
            ("drop_path_rate", 1.5, "drop_path_rate"),
            ("img_size", (224, 0), "img_size"),
        ],
    )
    def test_bad_config_values(self, field, value, message):
        with pytest.raises(ValueError, match=message):
            ViLConfig(**{field: value})


def test_package_exports():
    assert callable(vil.ops.mlstm)
    assert vil.VisionLSTM is VisionLSTM

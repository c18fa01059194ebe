"""MAC counting (vil.bench.flops) and `vil info`: hand counts, the real forward pass, the paper's numbers, growth."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vil import ViLConfig, VisionLSTM, kernels
from vil.bench.flops import PAPER_GMACS, count_macs, paper_macs
from vil.cli import main
from vil.layers.traversal import BLOCK_DESIGNS
from vil.models.variants import resolve_config

# 32 x 32 images, patch 8: a 4 x 4 grid, S = 16 tokens; E = 32, 4 heads of 8
TINY = dict(dim=16, depth=4, img_size=32, patch_size=8, num_classes=10)


def test_components_match_a_hand_count():
    config = ViLConfig(**TINY, in_chans=3)
    counted = count_macs(config).components
    tokens, dim, inner, depth = 16, 16, 32, 4
    # proj_up D -> 2E and proj_down E -> D for every token of every block
    assert counted["projections"] == depth * tokens * (dim * 2 * inner + inner * dim)
    assert counted["patch_embed"] == tokens * dim * 3 * 8 * 8  # one 3 x 8 x 8 -> D product per patch
    assert counted["conv"] == depth * tokens * inner * 3 * 3  # depthwise 3 x 3 (v2)
    assert counted["head"] == 2 * dim * 10  # bilateral concat: 2D -> classes
    # parallel form, one row tile (S <= 64): q k^T and the weighted sum of v are both S x S x E per block
    assert counted["cell"] == depth * 2 * tokens**2 * inner
    assert counted["other"] == 0


@pytest.mark.parametrize("design", list(BLOCK_DESIGNS))
def test_count_equals_the_counter_on_a_real_forward_pass(design):
    # count_macs counts one block on the meta device and the cell once per shape; the real pass runs everything
    config = ViLConfig(**TINY, block_design=design, pooling="middle_cls", version=1)
    model = VisionLSTM(config).eval()
    with torch.no_grad(), kernels.disabled(), FlopCounterMode(display=False) as counter:  # the counter sees torch ops
        model(torch.randn(1, 3, 32, 32))
    assert count_macs(config).total == counter.get_total_flops() // 2


@pytest.mark.parametrize("backend", ["parallel", "chunkwise"])
def test_count_follows_the_backend_on_a_real_forward_pass(backend):
    config = ViLConfig(**TINY, mlstm_backend=backend, chunk_size=16)
    with torch.no_grad(), kernels.disabled(), FlopCounterMode(display=False) as counter:
        VisionLSTM(config).eval()(torch.randn(1, 3, 64, 96))  # non-square, 8 x 12 tokens
    assert count_macs(config, (64, 96)).total == counter.get_total_flops() // 2


def test_parallel_grows_quadratically_and_chunkwise_linearly():
    config = ViLConfig(**TINY, chunk_size=16)
    inner, depth, tile = 32, 4, 64
    sizes = (64, 128, 256, 512)  # 64, 256, 1024, 4096 tokens: x4 per step
    parallel = [count_macs(config, size, "parallel").components["cell"] for size in sizes]
    chunkwise = [count_macs(config, size, "chunkwise").components["cell"] for size in sizes]
    assert all(b == 4 * a for a, b in zip(chunkwise, chunkwise[1:], strict=False)), chunkwise  # exactly linear in S
    # parallel: row tiles of 64; tile j (0-based) reads the (j + 1) * 64 columns up to its diagonal, for both products
    for size, macs in zip(sizes, parallel, strict=True):
        tiles = (size // 8) ** 2 // tile
        assert macs == depth * 2 * inner * tile * tile * tiles * (tiles + 1) // 2
    ratios = [b / a for a, b in zip(parallel, parallel[1:], strict=False)]
    assert ratios == sorted(ratios) and ratios[-1] > 15  # towards x16 per x4 tokens: quadratic
    assert parallel[-1] > 30 * chunkwise[-1]


def test_paper_convention_reproduces_the_published_numbers():
    for name, published in PAPER_GMACS.items():
        ours = paper_macs(resolve_config(name)).gmacs
        assert abs(ours - published) <= 0.1, (name, ours, published)  # ViL-B: 18.51 against 18.6
    tiny = paper_macs(resolve_config("vil2_tiny_patch16_224"))
    assert tiny.components["cell"] == 24 * 196**2 * 384  # S^2 * E per block


def test_info_command_json(capsys):
    assert main(["info", "vil2_tiny*", "--sizes", "224,448", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "1 MAC = 2 FLOPs" in result["convention"]
    (row,) = result["models"]
    assert row["name"] == "vil2_tiny_patch16_224" and row["params"] == 6_391_528 and row["tokens"] == 196
    assert row["paper_gmacs"] == 1.5 and round(row["paper_convention_gmacs"], 1) == 1.5
    assert row["cell_form"] == "parallel" and 1.5 < row["gmacs"] < 2.0
    assert [g["size"] for g in row["growth"]] == [224, 448] and row["growth"][1]["tokens"] == 784
    assert row["growth"][0]["chunkwise_form"] == "chunkwise (L=64)"


def test_info_command_table_and_errors(capsys):
    assert main(["info", "vil1_tiny_patch16_224", "--sizes", "none", "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "| vil1_tiny_patch16_224 | 6,088,360 | 224 | 196 | parallel |" in out and "| projections |" in out
    assert main(["info", "resnet*"]) == 2
    assert "no model matches 'resnet*'" in capsys.readouterr().err
    assert main(["info", "--sizes", "224,big"]) == 2
    assert "--sizes must be comma-separated" in capsys.readouterr().err

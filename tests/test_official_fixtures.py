"""Our model reproduces the official implementation's outputs (golden fixtures made with the official code)."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vil import ViLConfig, VisionLSTM

FIXTURES = Path(__file__).parent / "data" / "official"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.th"))


def map_by_hand(state_dict: dict) -> dict:
    """Training-code key names -> ours, for the single-direction designs of the fixtures."""
    rules = [
        (r"^xlstm\.blocks\.(\d+)\.xlstm_norm\.", r"blocks.\1.norm."),
        (r"^xlstm\.blocks\.(\d+)\.xlstm\.(proj_up|proj_down)\.", r"blocks.\1.layer.\2."),
        (r"^xlstm\.blocks\.(\d+)\.xlstm\.conv1d\.", r"blocks.\1.layer.branches.0.conv."),
        (r"^xlstm\.blocks\.(\d+)\.xlstm\.", r"blocks.\1.layer.branches.0."),
        (r"^xlstm\.post_blocks_norm\.", "norm."),
        (r"^head\.0\.", "fc_norm."),
        (r"^head\.1\.", "head."),
    ]
    mapped = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        mapped[key] = value
    return mapped


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", ["parallel", "chunkwise", "recurrent"])
def test_fixture_outputs_are_reproduced(name, backend):
    arch = json.loads((FIXTURES / f"{name}.json").read_text())
    checkpoint = torch.load(FIXTURES / f"{name}.th", weights_only=True, map_location="cpu")
    io = load_file(FIXTURES / f"{name}.io.safetensors")
    config = ViLConfig(
        version=arch["version"],
        dim=arch["dim"],
        depth=arch["depth"] * (2 if arch["version"] == 2 else 1),  # VisionLSTM2 counts pairs of blocks
        patch_size=arch["patch_size"],
        img_size=tuple(arch["input_shape"][1:]),
        num_classes=arch["output_shape"][0],
        mlstm_backend=backend,
        chunk_size=16,
    )
    model = VisionLSTM(config).eval()
    model.load_state_dict(map_by_hand(checkpoint["state_dict"]))
    with torch.no_grad():
        output = model(io["input"])
    torch.testing.assert_close(output, io["output"], rtol=1e-5, atol=1e-5)


def test_fixtures_are_present():
    assert len(NAMES) == 2

"""Data-parallel training under torchrun (2 CPU processes, gloo) equals single-process training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vil.train import run_files
from vil.train.recipes import get_recipe
from vil.train.trainer import train

SRC = Path(__file__).resolve().parents[1] / "src"
# No augmentation, no mixing, no drop path: the only difference left is the order of float additions.
SETTINGS = ["augmentation=none", "model_args.dim=16", "model_args.depth=2", "epochs=2", "warmup_epochs=1",
            "batch_size=32"]  # fmt: skip


def _weights(run_dir):
    return load_file(run_dir / run_files.MODEL_FINAL)


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    config = get_recipe("digits").with_overrides(SETTINGS)
    train(config, tmp_path / "single")
    train(config.replace(max_device_batch_size=16), tmp_path / "accumulated")  # 2 passes of 16 per step

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "vil.cli", "train", "--out", str(tmp_path / "ddp"), *(f"--set={s}" for s in SETTINGS)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / run_files.SUMMARY).read_text())
    assert summary["world_size"] == 2 and summary["batch_plan"].startswith("global batch 32 = 2 process(es)")
    assert summary["steps"] == 2 * (1149 // 32)  # 70 optimizer steps

    single = _weights(tmp_path / "single")
    for other in ("accumulated", "ddp"):
        weights = _weights(tmp_path / other)
        for name, tensor in single.items():
            torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-5, msg=f"{other}: {name}")
    single_summary = json.loads((tmp_path / "single" / run_files.SUMMARY).read_text())
    assert single_summary["top1"] > 50  # it trained: 70 steps moved the weights far from their initialisation
    assert summary["top1"] == pytest.approx(single_summary["top1"], abs=100 / 360)  # at most one image flips

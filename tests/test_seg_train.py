"""vil seg train / eval / predict on tiny settings: the run files, bit-exact resume, recipes and overrides, bad data."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vil.cli import main
from vil.seg import create_segmenter
from vil.seg.optim import parameter_groups
from vil.seg.trainer import sync_batchnorm
from vil.train.distributed import DistEnv

TINY_MODEL = dict(dim=16, depth=4, patch_size=4, pyramid_scales=[4, 2, 1, 0.5], channels=8, aux_channels=4)
TINY = ["--set", f"model_args={json.dumps(TINY_MODEL)}", "--set", "digit_scenes=[48,8]", "--set", "warmup_iters=1",
        "--set", "examples=0", "--batch-size", "8"]  # fmt: skip


def train(out, *extra) -> int:
    return main(["seg", "train", "--out", str(out), *TINY, *extra])


def test_a_run_writes_metrics_weights_and_pictures(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--iters", "4", "--set", "eval_every=2", "--set", "examples=2") == 0
    printed = capsys.readouterr().out
    assert "held-out scenes (8): mIoU" in printed and "wrote 2 prediction pictures" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["iters_completed"] == 4
    for key in ("miou", "aacc", "macc"):
        assert 0.0 <= summary[key] <= 1.0
    assert list(summary["iou"]) == ["background"] + [str(d) for d in range(10)]
    assert all(v is None or 0.0 <= v <= 1.0 for v in summary["iou"].values())
    assert len((out / "metrics.csv").read_text().splitlines()) == 3  # header + validations at steps 2 and 4
    label = Image.open(out / "predictions" / "test_00000.png")
    assert label.mode == "P" and label.size == (32, 32)
    assert (out / "predictions" / "test_00000_side_by_side.png").is_file()

    # vil seg eval reproduces the run's final validation; the JSON carries the per-class IoU
    assert main(["seg", "eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["miou"] == pytest.approx(summary["miou"]) and result["iou"] == summary["iou"]
    assert main(["seg", "eval", str(out), "--mode", "slide", "--crop-size", "16", "--stride", "8", "--scales",
                 "1,1.5", "--flip"]) == 0  # fmt: skip
    assert "mIoU" in capsys.readouterr().out
    assert main(["seg", "eval", str(out), "--scales", "1,x"]) == 2
    assert "--scales '1,x' is not a comma list" in capsys.readouterr().err

    image = out / "digit_scenes" / "images" / "validation" / "test_00003.png"
    assert main(["seg", "predict", str(image), "--model", str(out), "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "test_00003_side_by_side.png").is_file()
    assert "background" in capsys.readouterr().out


def test_resume_at_any_step_gives_bit_identical_weights(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--iters", "6", "--set", "eval_every=3"]
    assert train(straight, *common) == 0
    assert train(resumed, *common, "--stop-after", "2") == 0
    assert not (resumed / "model_final.safetensors").exists()
    # resumed with a loader worker process: the augmentation seeds do not depend on where samples are loaded
    assert main(["seg", "train", "--out", str(resumed), "--resume", "--workers", "1"]) == 0
    a, b = load_file(straight / "model_final.safetensors"), load_file(resumed / "model_final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (straight, resumed)]
    assert summaries[0]["miou"] == summaries[1]["miou"]


def test_explicit_options_win_over_the_recipe(capsys):
    argv = ["seg", "train", "--recipe", "ade20k_upernet_vil2_small", "--iters", "2000", "--crop-size", "256",
            "--batch-size", "4", "--set", "layer_decay=0.9", "--print-config"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["iters"], config["crop_size"], config["batch_size"], config["layer_decay"]) == (2000, 256, 4, 0.9)
    assert config["model"] == "vil2_small_patch16_224" and config["model_args"] == {"drop_path_rate": 0.05}
    assert config["warmup_iters"] == 1500 and config["lr"] == 5e-4 and config["init"] == "released"
    assert main(["seg", "train", "--recipe", "ade20k_upernet_vil2_tiny", "--set", "warmup_iters=200000"]) == 2
    assert "warmup_iters (200000) must be in [0, iters = 160000)" in capsys.readouterr().err
    assert main(["seg", "train", "--list-recipes"]) == 0
    assert "ade20k_upernet_vil2_base" in capsys.readouterr().out


def test_resume_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--iters", "2", "--set", "eval_every=2", "--stop-after", "1") == 0
    assert main(["seg", "train", "--out", str(out), "--resume", "--lr", "0.1"]) == 2
    assert "these differ: {'lr'" in capsys.readouterr().err


@pytest.mark.parametrize("backbone", ["vil2_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_layer_decay_over_the_backbone_and_full_lr_for_the_decoder(backbone):
    model = create_segmenter(backbone, 5, img_size=32)
    groups = parameter_groups(model, 0.05, 0.65)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["decode_head.classifier.1.weight"])] == 1.0
    assert scale_of[id(named["neck.levels.0.0.weight"])] == 1.0
    first = "backbone.blocks.0.layer.proj_up.weight" if "vil" in backbone else "backbone.blocks.0.attn.qkv.weight"
    assert scale_of[id(named[first])] == pytest.approx(0.65**12)  # 12 layers below the decoder (ViL: block pairs)
    if "vil" in backbone:  # two mLSTM blocks form one layer
        assert scale_of[id(named["backbone.blocks.1.layer.proj_up.weight"])] == scale_of[id(named[first])]
        assert decay_of[id(named["backbone.pos_embed.embed"])] == 0.0
    assert decay_of[id(named["decode_head.bottleneck.1.weight"])] == 0.0  # BatchNorm: no weight decay


def test_batchnorm_becomes_syncbatchnorm_under_gpu_ddp():
    model = create_segmenter("vil2_tiny_patch16_224", 3, img_size=32, **TINY_MODEL)
    gpu_ddp = DistEnv(rank=0, world_size=2, device=torch.device("cuda", 0))
    converted = sync_batchnorm(model, gpu_ddp)
    kinds = {type(m).__name__ for m in converted.modules()}
    assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds
    plain = create_segmenter("vil2_tiny_patch16_224", 3, img_size=32, **TINY_MODEL)
    assert "SyncBatchNorm" not in {type(m).__name__ for m in sync_batchnorm(plain, DistEnv()).modules()}


def test_bad_labels_stop_the_run_naming_file_and_value(tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("training", "validation"):
        for directory in ("images", "annotations"):
            (data / directory / split).mkdir(parents=True)
        for index in range(8):
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "images" / split / f"{index}.jpg")
            mask = np.full((32, 32), 1 + index % 2, np.uint8)
            mask[0, 0] = 5 if (split, index) == ("training", 3) else 0
            Image.fromarray(mask).save(data / "annotations" / split / f"{index}.png")
    argv = ["--data", str(data), "--num-classes", "2", "--iters", "2", "--crop-size", "32", "--set", "eval_every=2"]
    assert train(tmp_path / "run", *argv) == 2
    assert "training/3.png: label value 5 above the 2 classes" in capsys.readouterr().err

"""Fine-tuning: weights adapted to a new resolution, class count and patch stride; our files and official ones."""

import json
from pathlib import Path

import pytest
import torch
from official_format import to_training_checkpoint
from timm.data import ImageNetInfo

import vil
from vil.cli import main
from vil.data import digits
from vil.data.preprocessing import Preprocessing
from vil.layers.embed import resample_pos_embed
from vil.train import run_files
from vil.train.model_setup import adapt_pretrained
from vil.weights.classifier import load_classifier, save_classifier

OFFICIAL = Path(__file__).parent / "data" / "official"


def test_adapt_pretrained_resamples_the_position_embedding_and_replaces_the_head():
    source = vil.create_model("vil2_tiny_patch16_224", dim=32, depth=2, img_size=32, patch_size=4, num_classes=10)
    target = source.config.replace(img_size=64, num_classes=5, patch_stride=2, drop_path_rate=0.1)
    model = adapt_pretrained(source, target)
    state, before = model.state_dict(), source.state_dict()
    assert model.config == target
    assert torch.equal(state["pos_embed.embed"], resample_pos_embed(before["pos_embed.embed"], (16, 16)))
    assert state["head.weight"].shape == (5, source.head_hidden_size)
    for name, tensor in before.items():
        if not name.startswith(("head.", "pos_embed.")):
            assert torch.equal(state[name], tensor), name
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)  # stride 2: 31 x 31 tokens
    with pytest.raises(ValueError, match="another architecture: dim: 32 vs 48"):
        adapt_pretrained(source, target.replace(dim=48))


def test_fine_tune_our_weights_at_a_new_resolution_and_class_count(tmp_path, digits_png, capsys):
    source = vil.create_model("vil2_tiny_patch16_224", dim=16, depth=2, img_size=8, patch_size=2, num_classes=7)
    pre = Preprocessing(img_size=8, in_chans=3)
    save_classifier(tmp_path / "source.safetensors", source, list("abcdefg"), pre)

    out = tmp_path / "finetuned"
    argv = ["train", "--init", str(tmp_path / "source.safetensors"), "--data", str(digits_png), "--out", str(out),
            "--workers", "0", "--img-size", "16", "--epochs", "1", "--set", "warmup_epochs=0",
            "--set", "layer_decay=0.65", "--set", "model_args={}"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((out / run_files.CONFIG).read_text())
    assert config["config"]["init"] == str(tmp_path / "source.safetensors")
    finetuned = load_classifier(out)
    model = finetuned.model
    assert (model.config.img_size, model.config.num_classes, model.config.dim) == ((16, 16), 10, 16)
    assert model.pos_embed.grid == (8, 8)  # resampled from 4 x 4
    assert finetuned.classes == list(digits.CLASS_NAMES) and finetuned.preprocessing.img_size == 16
    assert "validation after epoch 1" in capsys.readouterr().out


def test_fine_tuning_recipes_need_init(capsys):
    assert main(["train", "--recipe", "in1k_finetune_224", "--data", "/nonexistent", "--out", "/tmp/x"]) == 2
    assert "pass --init FILE" in capsys.readouterr().err


def test_fine_tune_from_an_official_checkpoint(tmp_path, digits_png):
    out = tmp_path / "run"
    argv = ["train", "--init", str(OFFICIAL / "vil2_dim64_pairs2_32px_p4.th"), "--data", str(digits_png),
            "--workers", "0", "--out", str(out), "--img-size", "16", "--epochs", "1", "--set", "warmup_epochs=0",
            "--set", "model_args={}"]  # fmt: skip
    assert main(argv) == 0
    model = load_classifier(out).model
    assert (model.config.dim, model.config.img_size, model.config.num_classes) == (64, (16, 16), 10)


def test_official_imagenet_checkpoints_predict_imagenet_class_names(tmp_path, digits_png, capsys):
    model = vil.create_model("vil2_tiny_patch16_224", dim=16, depth=2, img_size=32, num_classes=1000)
    official = tmp_path / "vil2_tiny16_in1k.th"
    torch.save(to_training_checkpoint(model), official)  # the released file format
    image = str(sorted((digits_png / "val" / "0").iterdir())[0])
    assert main(["predict", image, "--model", str(official), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)["results"][0]["predictions"]
    info = ImageNetInfo()
    assert [p["name"] for p in predictions] == [info.index_to_description(p["index"]) for p in predictions]


def test_predict_with_a_model_name_uses_the_released_weights(tmp_path, digits_png, capsys, monkeypatch):
    released = to_training_checkpoint(vil.create_model("vil2_tiny_patch16_224"))  # stand-in for the released file
    urls = []

    def fake_download(url, **kwargs):
        urls.append(url)
        return released

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    image = str(sorted((digits_png / "val" / "0").iterdir())[0])
    assert main(["predict", image, "--model", "vil2_tiny_patch16_224", "--json"]) == 0
    assert urls == [vil.VARIANTS["vil2_tiny_patch16_224"].checkpoint().url]
    predictions = json.loads(capsys.readouterr().out)["results"][0]["predictions"]
    assert len(predictions) == 5 and predictions[0]["name"] == ImageNetInfo().index_to_description(
        predictions[0]["index"]
    )
    assert main(["predict", image, "--model", "vil9_huge"]) == 2
    assert "nor a model name with released weights" in capsys.readouterr().err

"""Bad weight files give errors that name the file and the problem."""

import argparse
from pathlib import Path

import pytest
import timm
import torch
from official_format import to_training_checkpoint
from safetensors.torch import save_file
from test_convert import ARCHITECTURES, make_model

import vil
from vil import CheckpointError
from vil.weights.convert import convert_checkpoint

FIXTURE = Path(__file__).parent / "data" / "official" / "vil1_dim64_depth3_32px_p4.th"


@pytest.fixture
def official(tmp_path):
    """A training-format checkpoint of a tiny v1 model (3 classes), as a dict to spoil and save."""
    return to_training_checkpoint(make_model(ARCHITECTURES["v1_stride"]))


def save(tmp_path, obj, name="bad.th") -> Path:
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.th does not exist"):
        vil.load_official(tmp_path / "nothing.th")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        vil.load_official(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.th").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.th is empty \(0 bytes\)"):
        vil.load_official(tmp_path / "empty.th")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.th").write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.th is not a checkpoint"):
        vil.load_official(tmp_path / "notes.th")
    with pytest.raises(CheckpointError, match="notes.th is not a checkpoint"):
        vil.create_model("vil2_tiny_patch16_224", pretrained=tmp_path / "notes.th")


def test_truncated_official_file(tmp_path):
    data = FIXTURE.read_bytes()
    (tmp_path / "cut.th").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.th is truncated or corrupt"):
        vil.load_official(tmp_path / "cut.th")


def test_truncated_safetensors_file(tmp_path):
    vil.save_pretrained(make_model(ARCHITECTURES["v1_stride"]), tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="cut.safetensors is a truncated or corrupt safetensors file"):
        vil.load_pretrained(tmp_path / "cut.safetensors")
    (tmp_path / "header.safetensors").write_bytes(data[:20])  # cut inside the header
    with pytest.raises(CheckpointError, match="header.safetensors is a truncated safetensors file"):
        vil.load_pretrained(tmp_path / "header.safetensors")


def test_file_that_needs_code_to_unpickle(tmp_path, official):
    official["args"] = argparse.Namespace(lr=0.1)  # what a training script might have pickled along
    path = save(tmp_path, official)
    with pytest.raises(
        CheckpointError, match=r"bad.th contains an object of type argparse.Namespace.*weights_only=True"
    ):
        vil.load_official(path)


def test_legacy_torch_save_format_loads(tmp_path, official):
    path = tmp_path / "legacy.th"
    torch.save(official, path, _use_new_zipfile_serialization=False)
    assert vil.load_official(path).config == ARCHITECTURES["v1_stride"]


def test_vit_checkpoint(tmp_path):
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
    )
    path = save(tmp_path, vit.state_dict(), "vit.th")
    with pytest.raises(CheckpointError, match=r"vit.th is not a Vision-LSTM checkpoint: it looks like a transformer"):
        vil.load_official(path)


def test_resnet_state_dict():
    resnet = timm.models.resnet.ResNet(timm.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)
    with pytest.raises(CheckpointError, match=r"resnet.th is not a Vision-LSTM checkpoint: it looks like a ResNet"):
        convert_checkpoint(resnet.state_dict(), source="resnet.th")


def test_not_a_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="list.th does not hold a state dict: it holds a list"):
        vil.load_official(save(tmp_path, [torch.zeros(1)], "list.th"))
    with pytest.raises(CheckpointError, match=r"mixed.th is not a state dict: 'epoch' .* not tensors"):
        vil.load_official(save(tmp_path, {"weight": torch.zeros(1), "epoch": 3}, "mixed.th"))


def test_missing_keys_are_listed(tmp_path, official):
    del official["state_dict"]["xlstm.blocks.1.xlstm.q_proj.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks.1.layer.branches.0.q_proj.weight"):
        vil.load_official(save(tmp_path, official))


def test_unexpected_keys_are_listed(tmp_path, official):
    official["state_dict"]["xlstm.blocks.0.xlstm.layerscale.gamma"] = torch.ones(16)  # a design vil does not have
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): xlstm.blocks.0.xlstm.layerscale.gamma"):
        vil.load_official(save(tmp_path, official))


def test_shape_mismatches_are_listed(tmp_path, official):
    official["state_dict"]["xlstm.blocks.1.xlstm.proj_down.weight"] = torch.zeros(16, 8)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): blocks.1.layer.proj_down.weight"):
        vil.load_official(save(tmp_path, official))


def test_incomplete_vil_checkpoint(tmp_path, official):
    del official["state_dict"]["pos_embed.embed"]  # e.g. a fixed sin-cos position embedding
    with pytest.raises(CheckpointError, match="bad.th has no tensor 'pos_embed.embed'"):
        vil.load_official(save(tmp_path, official))


def test_ctor_kwargs_that_contradict_the_tensors(tmp_path, official):
    official["ctor_kwargs"].update(alternation=None, bidirectional=True)  # but one branch per block
    with pytest.raises(CheckpointError, match="'bidirectional' has 2 traversal branches per block, the tensors have 1"):
        vil.load_official(save(tmp_path, official))
    official["ctor_kwargs"].update(bidirectional=False, pooling={"kind": "bilateral", "aggregate": "flatten"})
    with pytest.raises(CheckpointError, match="width 16, which does not fit pooling 'bilateral_concat'"):
        vil.load_official(save(tmp_path, official))
    official["ctor_kwargs"]["pooling"] = {"kind": "max_all"}
    with pytest.raises(CheckpointError, match="pooling .*max_all.* not one of the paper's designs"):
        vil.load_official(save(tmp_path, official))


def test_safetensors_without_our_config(tmp_path):
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="other.safetensors is a safetensors file without a ViL config"):
        vil.load_pretrained(tmp_path / "other.safetensors")


def test_official_file_given_to_the_safetensors_loader(tmp_path, official):
    with pytest.raises(CheckpointError, match="is a PyTorch checkpoint, not a safetensors file"):
        vil.load_pretrained(save(tmp_path, official))


def test_checkpoint_of_another_variant(tmp_path, official):
    with pytest.raises(CheckpointError, match=r"bad.th is not a vil1_tiny_patch16_224: dim: file 16, .* 192; depth"):
        vil.create_model("vil1_tiny_patch16_224", pretrained=save(tmp_path, official))


def test_final_norms_that_vil_does_not_have(tmp_path, official):
    no_fc_norm = {k: v for k, v in official["state_dict"].items() if not k.startswith("head.0.")}
    with pytest.raises(CheckpointError, match="has a head without a LayerNorm before it"):
        vil.load_official(save(tmp_path, no_fc_norm))
    no_norm = {k: v for k, v in official["state_dict"].items() if not k.startswith("xlstm.post_blocks_norm.")}
    with pytest.raises(CheckpointError, match="has no norm over all tokens after the blocks"):
        vil.load_official(save(tmp_path, no_norm))

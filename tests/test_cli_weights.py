"""``vil convert`` and ``vil checkpoints``."""

import json
from pathlib import Path

import torch

import vil
from vil import VARIANTS
from vil.cli import main

FIXTURES = Path(__file__).parent / "data" / "official"
V2_FIXTURE = FIXTURES / "vil2_dim64_pairs2_32px_p4.th"


def test_convert_writes_our_format_and_prints_the_architecture(tmp_path, capsys):
    assert main(["convert", str(V2_FIXTURE), str(tmp_path / "v2.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "training layout" in out
    assert "ViL v2, dim 64, 4 mLSTM blocks, patch 4, image 32, 10 classes, pooling bilateral_concat" in out
    assert "135,658 parameters" in out
    converted = vil.load_pretrained(tmp_path / "v2.safetensors")
    official = vil.load_official(V2_FIXTURE)
    assert converted.config == official.config
    for key, value in official.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


def test_convert_with_overrides_and_json(tmp_path, capsys):
    dst = tmp_path / "v2.safetensors"
    args = ["convert", str(V2_FIXTURE), str(dst), "--img-size", "48", "32", "--num-classes", "3", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "training" and report["config"]["img_size"] == [48, 32]
    assert vil.read_config(dst).num_classes == 3 and vil.read_config(dst).img_size == (48, 32)


def test_convert_of_a_plain_state_dict_notes_the_assumptions(tmp_path, capsys, caplog):
    state_dict = torch.load(V2_FIXTURE, weights_only=True)["state_dict"]
    torch.save(state_dict, tmp_path / "plain.th")
    assert main(["convert", str(tmp_path / "plain.th"), str(tmp_path / "a.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "note: patch stride = patch size assumed" in out and "note: block design 'alternating' assumed" in out
    assert "(--patch-stride to choose)" in out and "(--block-design to choose)" in out  # the CLI's flags
    assert "assumed" not in caplog.text  # said once, not also in the log
    assert main(["convert", str(tmp_path / "plain.th"), str(tmp_path / "b.safetensors"), "--patch-stride", "2"]) == 0
    assert "patch 4 stride 2" in capsys.readouterr().out
    assert vil.read_config(tmp_path / "b.safetensors").patch_stride == (2, 2)


def test_convert_of_a_bad_file_fails_with_a_message(tmp_path, capsys):
    (tmp_path / "bad.th").write_text("not weights")
    assert main(["convert", str(tmp_path / "bad.th"), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vil convert: error:") and "bad.th is not a checkpoint" in err
    assert not (tmp_path / "out.safetensors").exists()


def test_checkpoints_lists_the_released_files(capsys):
    assert main(["checkpoints"]) == 0
    out = capsys.readouterr().out
    released = [(name, c) for name, v in VARIANTS.items() for c in v.checkpoints]
    assert len(released) == 14
    for name, checkpoint in released:
        line = next(line for line in out.splitlines() if line.startswith(f"{name}.{checkpoint.tag} "))
        assert f"{checkpoint.top1:.1f}" in line and checkpoint.url in line


def test_checkpoints_json_and_filter(capsys):
    assert main(["checkpoints", "vil2_*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == [
        "vil2_base_patch16_224.in1k",
        "vil2_small_patch16_224.in1k",
        "vil2_tiny_patch16_224.in1k",
        "vil2_tiny_patch16_224.in1k_e400",
    ]
    tiny = rows[2]
    assert tiny == dict(
        name="vil2_tiny_patch16_224.in1k", model="vil2_tiny_patch16_224", default=True, version=2, dim=192, depth=24,
        patch=16, stride=16, top1=78.3, url="https://ml.jku.at/research/vision_lstm/download/vil2_tiny16_e800_in1k.th",
        official_name="vil2-tiny",
    )  # fmt: skip

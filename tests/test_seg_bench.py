"""vil bench --task seg: the ViL segmenter against the DeiT segmenter with the same neck and head."""

import json

import pytest

from vil.cli import main


@pytest.mark.slow
def test_seg_bench_times_both_segmenters_in_both_modes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--task", "seg", "--sizes", "32:1", "--repeats", "1", "--warmup", "0", "--json",
                 str(out)]) == 0  # fmt: skip
    rows = {(r["contender"], r["mode"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {
        ("deit_tiny_patch16_224 UperNet", "infer"), ("deit_tiny_patch16_224 UperNet", "train"),
        ("vil2_tiny_patch16_224 UperNet", "infer"), ("vil2_tiny_patch16_224 UperNet", "train"),
        ("vil2_tiny_patch16_224 UperNet (grad ckpt)", "train"),
    }  # fmt: skip
    vil, deit = rows["vil2_tiny_patch16_224 UperNet", "train"], rows["deit_tiny_patch16_224 UperNet", "train"]
    assert vil["x_baseline"] == pytest.approx(vil["seconds"] / deit["seconds"]) and vil["peak_mib"] > 0
    assert "vil2_tiny_patch16_224 UperNet takes" in capsys.readouterr().out

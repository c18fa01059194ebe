"""The default segmentation run, end to end: `vil seg train` with no arguments reaches its mIoU target."""

import json

import pytest

from vil.cli import main


@pytest.mark.slow
def test_default_run_reaches_80_percent_miou_on_held_out_scenes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["seg", "train", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["dataset"] == "digit_scenes"
    assert summary["miou"] >= 0.80, summary["iou"]
    assert len(list((out / "predictions").glob("*_side_by_side.png"))) == 4
    assert "held-out scenes (500): mIoU" in capsys.readouterr().out

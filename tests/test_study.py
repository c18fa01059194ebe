"""`vil study`: tiny studies on the embedded digits: outputs, skipping and resuming runs, failures, bad input."""

import json

import pytest

from vil.cli import main
from vil.studies import run_study
from vil.studies.runner import get_study, plan_study, reference_design
from vil.train import run_files
from vil.train.errors import Diverged
from vil.train.recipes import get_recipe
from vil.train.trainer import train

TINY = ["--set", "model_args.dim=16", "--set", "model_args.depth=2", "--set", "warmup_epochs=0"]


def tiny_base(**changes):
    return get_recipe("digits").with_overrides(
        ["model_args.dim=16", "model_args.depth=2", "warmup_epochs=0"], **changes
    )


@pytest.fixture(scope="module")
def blocks_study(tmp_path_factory):
    """A finished one-epoch study of two block designs with one seed, and what it printed."""
    out = tmp_path_factory.mktemp("study") / "blocks"
    argv = [
        "study",
        "blocks",
        "--designs",
        "alternating,quad",
        "--seeds",
        "1",
        "--epochs",
        "1",
        *TINY,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return out, argv


def test_study_writes_table_json_csv_and_plot(blocks_study, capsys):
    out, argv = blocks_study
    record = json.loads((out / "study.json").read_text())
    assert record["study"] == "blocks" and record["reference"] == "alternating"
    assert record["context"]["epochs"] == 1 and record["context"]["seeds"] == [0]
    alternating, quad = record["designs"]
    assert [alternating["design"], quad["design"]] == ["alternating", "quad"]
    assert len(alternating["top1"]) == 1 and alternating["top1_std"] is None
    assert quad["params"] > alternating["params"]  # four branches with their own weights per block
    assert quad["gmacs"] > 2 * alternating["gmacs"]  # four traversals per block instead of one
    assert [run["status"] for run in record["runs"]] == ["trained", "trained"]
    csv_lines = (out / "study.csv").read_text().splitlines()
    assert csv_lines[0].startswith("design,seed,status,top1") and len(csv_lines) == 3
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "quad" / "seed0" / run_files.SUMMARY).is_file()

    # the same command again trains nothing: both runs are finished
    model_file = out / "quad" / "seed0" / run_files.MODEL_FINAL
    written = model_file.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "starting" not in printed and printed.count("(finished before)") == 2
    assert "| **alternating** (default) |" in printed and "| quad |" in printed and "| MMACs |" in printed
    assert model_file.stat().st_mtime_ns == written
    assert [r["status"] for r in json.loads((out / "study.json").read_text())["runs"]] == ["skipped", "skipped"]


def test_study_refuses_a_directory_with_other_settings(blocks_study, capsys):
    out, argv = blocks_study
    assert main([*argv, "--set", "lr=0.01"]) == 2
    error = capsys.readouterr().err
    assert "holds a run with other settings (lr:" in error and "choose another --out" in error


def test_a_stopped_run_is_resumed_and_a_failed_run_reported(tmp_path):
    base = tiny_base(epochs=2)
    runs = plan_study(get_study("pooling"), base, tmp_path, designs=["mean", "middle_cls"], seeds=1)
    train(runs[0].config, runs[0].run_dir, stop_after_epoch=1)  # "mean" stopped after its first epoch

    def train_or_diverge(config, run_dir, resume):
        if config.model_args["pooling"] == "middle_cls":
            raise Diverged("the training loss became nan")
        return train(config, run_dir, resume=resume)

    result = run_study("pooling", base, tmp_path, designs=["mean", "middle_cls"], seeds=1, train_run=train_or_diverge)
    assert [o.status for o in result.outcomes] == ["resumed", "failed"]
    mean, middle_cls = result.designs
    assert mean.seeds == [0] and json.loads((runs[0].run_dir / run_files.SUMMARY).read_text())["epochs_completed"] == 2
    assert middle_cls.mean is None and middle_cls.missing_seeds == [0]
    assert "| middle_cls | no finished run |" in result.table
    assert result.reference == "bilateral_concat"  # v2's pooling, not part of this subset


def test_plan_runs_every_design_with_every_seed(tmp_path):
    base = tiny_base(seed=5)
    runs = plan_study(get_study("pooling"), base, tmp_path, seeds=2)
    assert len(runs) == 12 and [r.seed for r in runs[:6]] == [5] * 6 and runs[6].seed == 6  # seed-major
    assert {r.config.model_args["pooling"] for r in runs} == {"bilateral_concat", "bilateral_avg", "mean",
                                                             "middle_patch", "middle_cls", "last"}  # fmt: skip
    assert runs[7].run_dir == tmp_path / "bilateral_avg" / "seed6" and runs[7].config.seed == 6
    assert all(r.config.epochs == base.epochs and r.config.model_args["dim"] == 16 for r in runs)
    assert reference_design(get_study("blocks"), base) == "alternating"
    assert reference_design(get_study("pooling"), base.with_overrides(["model_args.version=1"])) == "bilateral_avg"


def test_bad_study_input(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    assert main(["study", "blocks", "--designs", "alternating,diagonal", *out]) == 2
    assert "unknown block_design ['diagonal']" in capsys.readouterr().err
    assert main(["study", "pooling", "--set", "model_args.pooling=mean", *out]) == 2
    assert "with --designs instead of --set model_args.pooling=mean" in capsys.readouterr().err
    assert main(["study", "blocks", "--seeds", "0", *out]) == 2
    assert "seeds must be a positive number" in capsys.readouterr().err
    assert main(["study", "blocks", "--recipe", "nope", *out]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_study_on_an_image_folder(digits_png, tmp_path, capsys):
    argv = ["study", "pooling", "--data", str(digits_png), "--designs", "mean", "--seeds", "1", "--epochs", "1"]
    assert main([*argv, *TINY, "--out", str(tmp_path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)  # with --json, stdout holds only the JSON
    assert record["context"]["dataset"] == str(digits_png) and record["context"]["val_images"] == 288
    (mean,) = record["designs"]
    assert mean["design"] == "mean" and len(mean["top1"]) == 1
    config = json.loads((tmp_path / "mean" / "seed0" / run_files.CONFIG).read_text())
    assert config["config"]["data"] == str(digits_png) and config["run"]["model_config"]["in_chans"] == 3

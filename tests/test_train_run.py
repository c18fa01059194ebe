"""`vil train`, `vil eval` and `vil predict` end to end on the embedded digits with tiny models."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vil.cli import main
from vil.train import run_files
from vil.train.recipes import get_recipe
from vil.train.state import load_checkpoint
from vil.train.trainer import Trainer, train
from vil.weights.classifier import load_classifier

TINY = ["--set", "model_args.dim=16", "--set", "model_args.depth=2", "--set", "warmup_epochs=1"]


def tiny_config(**changes):
    return get_recipe("digits").with_overrides(
        ["model_args.dim=16", "model_args.depth=2", "warmup_epochs=1"], **changes
    )


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A finished two-epoch run of a tiny model, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("run") / "digits"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_run_directory_holds_everything(digits_run):
    names = {p.name for p in digits_run.iterdir()}
    expected = {run_files.CONFIG, run_files.METRICS_CSV, run_files.METRICS_JSONL, run_files.TENSORBOARD,
                run_files.CURVES, run_files.SUMMARY, run_files.SKIPPED, run_files.CHECKPOINT, run_files.MODEL_BEST,
                run_files.MODEL_FINAL}  # fmt: skip
    assert expected <= names
    summary = json.loads((digits_run / run_files.SUMMARY).read_text())
    assert summary["finished"] and summary["epochs"] == summary["epochs_completed"] == 2
    assert summary["steps"] == 2 * (1149 // 64) and summary["seconds"] > 0 and summary["skipped_files"] == 0
    assert (summary["train_images"], summary["val_images"], summary["test_images"]) == (1149, 288, 360)
    assert 0 <= summary["top1"] <= summary["top5"] <= 100 and 0 <= summary["val_top1"] <= summary["val_top5"] <= 100
    rows = [json.loads(line) for line in (digits_run / run_files.METRICS_JSONL).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["val_top1"] == summary["val_top1"]
    best = max(rows, key=lambda r: (r["val_top1"], -r["val_loss"]))
    assert summary["best_epoch"] == best["epoch"] and summary["best_val_top1"] == best["val_top1"]
    csv_lines = (digits_run / run_files.METRICS_CSV).read_text().splitlines()
    assert csv_lines[0].startswith("epoch,step,lr,train_loss,val_loss,val_top1,val_top5") and len(csv_lines) == 3
    assert (digits_run / run_files.CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("events.out.tfevents") for p in (digits_run / run_files.TENSORBOARD).iterdir())
    saved = json.loads((digits_run / run_files.CONFIG).read_text())
    assert saved["config"]["recipe"] == "digits" and saved["run"]["params"] > 0
    classifier = load_classifier(digits_run)
    assert classifier.classes == list("0123456789") and classifier.preprocessing.in_chans == 1
    assert classifier.source.name == run_files.MODEL_BEST and classifier.dataset == "digits"


def test_a_run_directory_is_never_overwritten(digits_run, capsys):
    assert main(["train", *TINY, "--epochs", "2", "--out", str(digits_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_eval_reproduces_the_test_accuracy_of_the_selected_weights(digits_run, capsys):
    assert main(["eval", str(digits_run)]) == 0
    result = json.loads((digits_run / "eval_digits_test.json").read_text())
    summary = json.loads((digits_run / run_files.SUMMARY).read_text())
    assert result["top1"] == summary["top1"] and result["top5"] == summary["top5"] and result["images"] == 360
    assert f"top-1 {summary['top1']:.2f}%" in capsys.readouterr().out


def test_eval_on_an_image_folder(digits_run, digits_png, tmp_path):
    out = tmp_path / "eval.json"
    argv = ["eval", str(digits_run), "--data", str(digits_png), "--split", "test", "--workers", "0", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    summary = json.loads((digits_run / run_files.SUMMARY).read_text())
    assert result["images"] == 360 and abs(result["top1"] - summary["top1"]) <= 100 * 2 / 360  # PNG rounding


def test_predict_prints_the_top5_with_names(digits_run, digits_png, capsys):
    images = sorted((digits_png / "val" / "3").iterdir())[:2]
    assert main(["predict", *map(str, images), "--model", str(digits_run), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["image"] for r in results] == [str(p) for p in images]
    for result in results:
        probabilities = [p["probability"] for p in result["predictions"]]
        assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
        assert all(p["name"] == str(p["index"]) for p in result["predictions"])
    assert main(["predict", str(images[0]), "--model", str(digits_run)]) == 0
    assert "1. " in capsys.readouterr().out


def test_resume_after_a_stop_or_a_crash_gives_identical_weights(tmp_path, monkeypatch):
    # randomness everywhere: shifted crops (torch), Mixup/CutMix (numpy), drop path (torch); and an EMA
    config = tiny_config(
        epochs=3,
        mixup=0.8,
        cutmix=1.0,
        ema_decay=0.9,
        model_args=dict(dim=16, depth=2, patch_size=2, drop_path_rate=0.1),
    )
    train(config, tmp_path / "whole")
    train(config, tmp_path / "stopped", stop_after_epoch=1)
    assert load_checkpoint(tmp_path / "stopped" / run_files.CHECKPOINT)["epoch"] == 1
    train(config, tmp_path / "stopped", resume=True)

    steps = 0
    original_step = Trainer._optimizer_step

    def crash_in_epoch_two(self):
        nonlocal steps
        steps += 1
        if steps == 30:  # 17 steps per epoch: mid-way through epoch 2
            raise KeyboardInterrupt
        original_step(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "crashed")
    monkeypatch.setattr(Trainer, "_optimizer_step", original_step)
    assert load_checkpoint(tmp_path / "crashed" / run_files.CHECKPOINT)["epoch"] == 1
    train(config, tmp_path / "crashed", resume=True)

    reference = load_file(tmp_path / "whole" / run_files.MODEL_FINAL)
    for run in ("stopped", "crashed"):
        for name in (run_files.MODEL_FINAL, run_files.MODEL_EMA):
            weights = load_file(tmp_path / run / name)
            expected = load_file(tmp_path / "whole" / name)
            assert all(torch.equal(weights[k], expected[k]) for k in expected), (run, name)
        history = json.loads((tmp_path / run / run_files.SUMMARY).read_text())
        assert history["epochs_completed"] == 3
    rows = (tmp_path / "crashed" / run_files.METRICS_JSONL).read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]
    assert not torch.equal(reference["head.weight"], torch.zeros_like(reference["head.weight"]))


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"),
    ],
)
def test_out_of_memory_keeps_the_trained_epochs_and_says_what_to_do(tmp_path, monkeypatch, capsys, error):
    calls = 0
    original = Trainer._forward_backward

    def fail_in_epoch_two(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 25:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_forward_backward", fail_in_epoch_two)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 3
    message = capsys.readouterr().err
    assert "out of memory on cpu with 64 images per forward pass" in message
    assert "up to epoch 1" in message and f"--out {out} --resume --set max_device_batch_size=32" in message
    assert load_checkpoint(out / run_files.CHECKPOINT)["epoch"] == 1
    monkeypatch.setattr(Trainer, "_forward_backward", original)
    assert main(["train", "--out", str(out), "--resume", "--set", "max_device_batch_size=32"]) == 0
    summary = json.loads((out / run_files.SUMMARY).read_text())
    assert summary["finished"] and summary["batch_plan"].endswith("2 accumulation step(s) x 32 images")


def test_bad_data_directories(tmp_path, capsys):
    def error_of(data):
        assert main(["train", *TINY, "--epochs", "2", "--data", str(data), "--out", str(tmp_path / "out")]) == 2
        return capsys.readouterr().err

    assert "data directory" in error_of(tmp_path / "missing") and "does not exist" in error_of(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "has no 'train' folder" in error_of(tmp_path / "empty")
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    assert "class folders without images" in error_of(tmp_path / "empty")


def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path, digits_png, capsys):
    import shutil

    data = shutil.copytree(digits_png, tmp_path / "data")
    corrupt = data / "train" / "3" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    notes = data / "val" / "1" / "notes.txt"
    notes.write_text("hello")
    out = tmp_path / "run"
    assert main(["train", "--recipe", "digits", *TINY, "--epochs", "2", "--data", str(data), "--out", str(out)]) == 0
    summary = json.loads((out / run_files.SUMMARY).read_text())
    assert summary["skipped_files"] == 2
    listed = (out / run_files.SKIPPED).read_text()
    assert str(corrupt) in listed and str(notes) in listed and "cannot read image" in listed
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().out


def test_checkpoints_of_another_architecture_are_refused(digits_run, digits_png, tmp_path, capsys):
    def error_of(*argv):
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "out")
    init = ["train", "--init", str(digits_run), "--out", out]
    message = error_of(*init, "--model", "vil2_tiny_patch16_224")
    assert "not the architecture of 'vil2_tiny_patch16_224'" in message and "dim: 192 vs 16" in message
    message = error_of(*init, *TINY, "--set", "model_args.dim=32")
    assert "changes the architecture of the init weights" in message and "dim: 16 vs 32" in message
    message = error_of(
        *init, "--set", "model_args={}", "--recipe", "digits", "--data", str(digits_png), "--epochs", "4"
    )
    assert "in_chans: 1 vs 3" in message  # a grey digits model, RGB image files

    saved = json.loads((digits_run / run_files.CONFIG).read_text())
    saved["config"]["model_args"]["depth"] = 4
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / run_files.CHECKPOINT).write_bytes((digits_run / run_files.CHECKPOINT).read_bytes())
    (moved / run_files.CONFIG).write_text(json.dumps(saved))
    message = error_of("train", "--out", str(moved), "--resume")
    assert "another architecture than this run: depth: 2 in the checkpoint vs 4" in message

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "junk.pt is not a checkpoint" in error_of("eval", str(tmp_path / "junk.pt"))
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, foreign)
    assert "foreign.safetensors" in error_of("predict", "x.png", "--model", str(foreign))


def test_recipes_and_settings_can_be_listed(capsys):
    assert main(["train", "--list-recipes"]) == 0
    assert "in1k_vil2_tiny" in capsys.readouterr().out
    assert main(["train", "--recipe", "in1k_vil2_base", "--set", "epochs=10", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["epochs"] == 10 and config["model"] == "vil2_base_patch16_224"


@pytest.mark.slow
def test_default_run_reaches_97_percent(tmp_path, capsys):
    """The main job (`vil train` without arguments) as the README states it, into a temporary run directory."""
    assert main(["train", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / run_files.SUMMARY).read_text())
    assert summary["finished"] and summary["epochs_completed"] == 40
    assert summary["top1"] >= 97.0, summary
    assert f"top-1 {summary['top1']:.2f}%" in capsys.readouterr().out


def test_imagenet_recipe_pipeline_runs_on_an_image_folder(tmp_path, digits_png, monkeypatch):
    """The paper's pipeline (RandomResizedCrop + flip + 3-Augment + ColorJitter, Mixup/CutMix with soft-target
    cross-entropy, loader worker processes) end to end, on the digits as PNG files with a tiny model.
    """
    from vil.train.trainer import Trainer

    seen = {}
    original = Trainer._loss

    def spy(self, logits, targets):
        seen["targets"] = targets
        return original(self, logits, targets)

    monkeypatch.setattr(Trainer, "_loss", spy)
    out = tmp_path / "run"
    argv = ["train", "--recipe", "in1k_vil2_tiny", "--data", str(digits_png), "--img-size", "16", "--out", str(out),
            "--epochs", "2", "--batch-size", "64", "--workers", "2", "--set", "warmup_epochs=1",
            "--set", "compile=false", "--set", "threads=1", "--set", "model_args.dim=16",
            "--set", "model_args.depth=2", "--set", "model_args.patch_size=4"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / run_files.SUMMARY).read_text())
    assert summary["finished"] and summary["recipe"] == "in1k_vil2_tiny" and summary["dataset"] == str(digits_png)
    targets = seen["targets"]
    assert targets.shape == (64, 10) and torch.allclose(targets.sum(dim=1), torch.ones(64))  # soft, mixed targets
    assert (targets.max(dim=1).values < 1).any()


def test_a_non_finite_loss_stops_training_naming_its_step(tmp_path, monkeypatch, capsys):
    # the loss is read one step late (no wait for the device per step): the message still names the step it arose in
    losses = iter([1.0, 1.0, float("nan")])
    original = Trainer._loss
    monkeypatch.setattr(Trainer, "_loss", lambda self, *a: original(self, *a) * next(losses, 1.0))
    assert main(["train", *TINY, "--epochs", "2", "--out", str(tmp_path / "run")]) != 0
    assert "the training loss became nan at step 3;" in capsys.readouterr().err

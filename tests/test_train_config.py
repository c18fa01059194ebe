"""Recipes, settings overrides and the batch plan."""

import numpy as np
import pytest
from PIL import Image

from vil.cli import build_parser
from vil.commands.train import resolve_config
from vil.train.batching import plan_batches
from vil.train.config import TrainConfig
from vil.train.recipes import RECIPES, get_recipe


def test_every_recipe_is_valid_and_names_a_known_model():
    import vil

    for name, recipe in RECIPES.items():
        assert recipe.recipe == name
        if recipe.model is not None:
            assert recipe.model in vil.list_models()


@pytest.mark.parametrize(
    "name, model, img_size, epochs, batch, drop_path",
    [
        ("in1k_vil2_tiny", "vil2_tiny_patch16_224", 192, 800, 2048, 0.0),
        ("in1k_vil2_small", "vil2_small_patch16_224", 192, 400, 2048, 0.05),
        ("in1k_vil2_base", "vil2_base_patch16_224", 192, 400, 2048, 0.2),
        ("in1k_vil1_small", "vil1_small_patch16_224", 224, 400, 1024, 0.05),
        ("in1k_vil1_base", "vil1_base_patch16_224", 224, 400, 2048, 0.2),
    ],
)
def test_pretraining_recipes_follow_the_official_configs(name, model, img_size, epochs, batch, drop_path):
    r = get_recipe(name)
    assert (r.model, r.img_size, r.epochs, r.batch_size, r.model_args["drop_path_rate"]) == (
        model, img_size, epochs, batch, drop_path,
    )  # fmt: skip
    assert (r.lr, r.betas, r.weight_decay, r.warmup_epochs, r.min_lr, r.clip_grad) == (
        1e-3, (0.9, 0.999), 0.05, 5.0, 1e-6, 1.0,
    )  # fmt: skip
    assert (r.augmentation, r.crop_scale, r.color_jitter, r.hflip) == ("paper", (0.08, 1.0), 0.3, 0.5)
    assert (r.mixup, r.cutmix, r.mix_prob, r.mix_switch_prob, r.label_smoothing) == (0.8, 1.0, 1.0, 0.5, 0.0)
    assert r.scaled_lr() == pytest.approx(1e-3 * batch / 1024)


def test_fine_tuning_recipes():
    ft = get_recipe("in1k_finetune_224")
    assert (ft.img_size, ft.epochs, ft.warmup_epochs, ft.lr, ft.clip_grad, ft.batch_size) == (
        224,
        20,
        5,
        1e-5,
        None,
        1024,
    )
    longseq = get_recipe("in1k_longseq_stride8")
    assert longseq.model_args == {"patch_stride": 8}
    assert (longseq.epochs, longseq.weight_decay, longseq.min_lr, longseq.max_device_batch_size) == (
        30,
        1e-8,
        1e-5,
        256,
    )


def test_overrides_are_typed_and_validated():
    config = get_recipe("digits").with_overrides(
        ["epochs=7", "model_args.dim=32", "clip_grad=null", "betas=[0.9, 0.95]", "data=/some/dir", "lr=1"]
    )
    assert config.epochs == 7 and config.model_args["dim"] == 32 and config.clip_grad is None
    assert config.betas == (0.9, 0.95) and config.data == "/some/dir" and config.lr == 1.0
    assert config.model_args["depth"] == 4  # the recipe's other model settings stay
    with pytest.raises(ValueError, match="unknown setting 'epoch'.*epochs"):
        config.with_overrides(["epoch=3"])
    with pytest.raises(ValueError, match="epochs must be an int, got 1.5"):
        config.with_overrides(["epochs=1.5"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        config.with_overrides(["epochs"])
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        config.with_overrides(["augmentation=flip"])
    with pytest.raises(ValueError, match="warmup_epochs"):
        config.with_overrides(["epochs=2"])  # the digits recipe warms up for 3 epochs (the CLI scales it)
    with pytest.raises(ValueError, match="model_args: unknown ViLConfig field 'foo'; fields: version, dim"):
        config.with_overrides(["model_args.foo=1"])


def test_config_round_trips_through_a_dict():
    config = get_recipe("in1k_longseq_stride8")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_batch_plan_accumulates_to_the_global_batch():
    plan = plan_batches(2048, world_size=8, max_device_batch=None)
    assert (plan.device_batch, plan.accumulation) == (256, 1)
    plan = plan_batches(1024, world_size=2, max_device_batch=200)  # 512 per process, at most 200 per pass
    assert (plan.device_batch, plan.accumulation) == (128, 4)
    assert plan_batches(64, 1, 64, even=True).device_batch == 64
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        plan_batches(64, 3, None)
    with pytest.raises(ValueError, match="even number"):
        plan_batches(6, 1, 1, even=True)


def test_cli_resume_keeps_the_saved_settings(tmp_path):
    from vil.train import run_files

    saved = get_recipe("digits").with_overrides(["epochs=5"])
    run_files.write_config(tmp_path, saved, {})

    def parse(*argv):
        return build_parser().parse_args(["train", *argv])

    config, notes = resolve_config(parse("--out", str(tmp_path), "--resume", "--workers", "0"))
    assert config == saved.replace(workers=0) and notes == []  # nothing is fitted again
    changed, _ = resolve_config(parse("--out", str(tmp_path), "--resume", "--set", "max_device_batch_size=8"))
    assert changed.max_device_batch_size == 8  # runtime settings may change
    with pytest.raises(ValueError, match="these differ.*lr"):
        resolve_config(parse("--out", str(tmp_path), "--resume", "--lr", "0.1"))
    with pytest.raises(ValueError, match="--resume needs --out"):
        resolve_config(parse("--resume"))


def test_precision_settings():
    import torch

    from vil.precision import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("fp32", cpu) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        amp_dtype("fp16", cpu)


def _resolve(*argv):
    return resolve_config(build_parser().parse_args(["train", *argv]))


def _image_folder(root, count, size, splits=("train",)):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count // 2):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_an_explicit_model_replaces_the_recipes_model_or_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"model vil2_small_patch16_224 does not fit 8 px images.*patch_size=2"):
        _resolve("--model", "vil2_small_patch16_224", "--epochs", "4")
    config, notes = _resolve("--model", "vil2_small_patch16_224", "--set", "model_args.patch_size=2")
    assert config.model == "vil2_small_patch16_224" and config.model_args == {"patch_size": 2}
    config, notes = _resolve("--recipe", "in1k_vil2_small", "--model", "vil2_base_patch16_224")
    assert config.model_args == {} and "replacing the in1k_vil2_small recipe's model_args" in notes[0]
    config, notes = _resolve("--recipe", "in1k_vil2_small", "--init", "weights.safetensors")
    assert config.model is None and "architecture of the --init weights" in notes[0]


def test_own_images_get_vil_t_at_their_image_size_and_a_batch_that_fits(tmp_path):
    data = _image_folder(tmp_path / "photos", 120, 96)
    config, notes = _resolve("--data", str(data))
    assert (config.recipe, config.model, config.img_size) == ("folder", "vil2_tiny_patch16_224", 96)
    assert any("image size 96 px: the training images' median short side is 96 px" in n for n in notes)
    # 108 training images (12 carved out for validation): batch 128 -> 8, 13 steps per epoch
    assert config.batch_size == 8 and any("batch 8 instead of the recipe's 128" in n for n in notes)
    assert config.scaled_lr() == pytest.approx(1e-3 * 128 / 1024 * (8 / 128) ** 0.5)
    config, notes = _resolve("--data", str(data), "--img-size", "64", "--batch-size", "32")
    assert (config.img_size, config.batch_size) == (64, 32) and not any("image size" in n for n in notes)
    config, _ = _resolve("--data", str(data), "--recipe", "digits")  # the digits recipe on image files
    assert config.img_size == 8 and config.model is None


def test_short_runs_scale_the_warm_up_unless_it_is_given():
    config, notes = _resolve("--epochs", "2")
    assert config.warmup_epochs == 0.5 and "warm-up 0.5 epochs instead of the recipe's 3" in notes[0]
    config, notes = _resolve()
    assert config.warmup_epochs == 3 and notes == []
    with pytest.raises(ValueError, match=r"warmup_epochs \(3.0\) must be fewer than epochs \(2\)"):
        _resolve("--epochs", "2", "--set", "warmup_epochs=3")

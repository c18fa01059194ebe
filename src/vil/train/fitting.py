"""Settings a run fits to its data and its length where the user left them to the recipe, each choice printed.

- image size (recipe ``folder``): the median short side of the training images, rounded to the model's patch and
  kept within ``IMG_SIZE_RANGE``: a user's 96 px images train at 96 px, not at the recipe's nominal size.
- batch (recipes ``digits`` and ``folder``): halved until an epoch has at least ``MIN_STEPS_PER_EPOCH`` steps, the
  peak lr following the square root of the batch, so 120 images train in 15 steps of 8, not in one step of 64 that
  drops 56.
- warm-up (every recipe): at most ``MAX_WARMUP_FRACTION`` of the epochs, so ``--epochs 2`` runs instead of being
  refused and a short run is not all warm-up.

An explicit flag or ``--set`` always wins. The model must fit the image size, else the run stops with the reason.
"""

from __future__ import annotations

import math
import statistics

from PIL import Image

from ..data import digits
from ..data.sources import DIGITS, folder_train_val
from ..models.config import ViLConfig
from ..models.variants import resolve_config
from .config import TrainConfig
from .model_setup import run_model_config

MIN_STEPS_PER_EPOCH = 8
MIN_FITTED_BATCH = 8
MAX_WARMUP_FRACTION = 0.25
IMG_SIZE_RANGE = (32, 224)
SIZE_SAMPLE = 200  # image headers read to find the typical size (evenly spread over the sorted files)
FITS_IMAGE_SIZE = ("folder",)
FITS_BATCH = ("digits", "folder")


def configure_run(recipe: TrainConfig, assignments: list[str], flags: dict) -> tuple[TrainConfig, list[str]]:
    """A new run's config: ``recipe`` with the user's ``flags`` ({field: value}) and ``--set`` ``assignments`` on
    top, where an explicit model replaces the recipe's model, and the settings left to the recipe fitted to the data
    and the run's length (:func:`fit_run`); and one line per choice made, for the user.
    """
    flags = dict(flags)
    explicit = set(flags) | {assignment.partition("=")[0].strip().partition(".")[0] for assignment in assignments}
    if "warmup_epochs" not in explicit:
        flags["warmup_epochs"] = 0.0  # until fit_run scales the recipe's warm-up to the run's epochs
    config = recipe.with_overrides(assignments, **flags)
    notes = []
    if config.model != recipe.model and recipe.model_args and not any(a.startswith("model_args=") for a in assignments):
        # the recipe's model_args describe the recipe's own model: an explicit model replaces them (the user's own
        # model_args.FIELD settings stay)
        given = {a.partition("=")[0].strip().removeprefix("model_args.") for a in assignments if "model_args." in a}
        notes.append(f"model {config.model}, replacing the {recipe.recipe} recipe's model_args {recipe.model_args}")
        config = config.replace(model_args={k: v for k, v in config.model_args.items() if k in given})
    if config.init and config.model and "model" not in explicit:
        notes.append(f"model: the architecture of the --init weights (not the {recipe.recipe} recipe's {config.model})")
        config = config.replace(model=None)
    config, fitted = fit_run(config, recipe, explicit)
    return config, notes + fitted


def fit_run(config: TrainConfig, recipe: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, list[str]]:
    """``config`` (``recipe`` with the user's settings, ``explicit`` their names) with the settings the user left to
    the recipe fitted, and one line per choice made. The warm-up comes from ``recipe`` (``config``'s is ignored).
    """
    notes: list[str] = []
    train_images = None
    if config.recipe in FITS_IMAGE_SIZE and config.data and "img_size" not in explicit:
        train_paths = [path for path, _ in folder_train_val(config.data)[0].samples]
        train_images = len(train_paths)
        typical = typical_short_side(train_paths)
        patch = _model_patch(config)
        size = min(max(round(typical / patch) * patch, IMG_SIZE_RANGE[0]), IMG_SIZE_RANGE[1])
        config = config.replace(img_size=size)
        notes.append(
            f"image size {size} px: the training images' median short side is {typical} px (rounded to the patch of "
            f"{patch}, within {IMG_SIZE_RANGE[0]}-{IMG_SIZE_RANGE[1]}; --img-size N to choose)"
        )
    if config.recipe in FITS_BATCH and "batch_size" not in explicit:
        if train_images is None:
            train_images = count_training_images(config.data)
        batch = recipe_batch = config.batch_size
        while batch // 2 >= MIN_FITTED_BATCH and train_images // batch < MIN_STEPS_PER_EPOCH:
            batch //= 2
        if batch != recipe_batch:
            # lr is per 1024 images and scales linearly with the batch; for AdamW at a fraction of the recipe's batch
            # that cut is too deep (the square-root rule fits adaptive optimisers), so the lr per 1024 grows by
            # sqrt(recipe batch / batch) and the peak lr falls with the square root of the batch
            lr = config.lr if "lr" in explicit else config.lr * math.sqrt(recipe_batch / batch)
            config = config.replace(batch_size=batch, lr=lr)
            notes.append(
                f"batch {batch} instead of the recipe's {recipe_batch}: {train_images} training images give "
                f"{train_images // batch} steps per epoch; peak lr {config.scaled_lr():.2e} (square-root scaling; "
                "--batch-size N, --lr X to choose)"
            )
    if "warmup_epochs" not in explicit:
        warmup = min(recipe.warmup_epochs, MAX_WARMUP_FRACTION * config.epochs)
        if warmup != recipe.warmup_epochs:
            notes.append(
                f"warm-up {warmup:g} epochs instead of the recipe's {recipe.warmup_epochs:g}: at most "
                f"{MAX_WARMUP_FRACTION:.0%} of the {config.epochs} epochs (--set warmup_epochs=N to choose)"
            )
        config = config.replace(warmup_epochs=warmup)
    check_model_fits(config)
    return config, notes


def count_training_images(data: str | None) -> int:
    """How many images a run on ``data`` trains on (after the validation split is set aside)."""
    if data is None or data == DIGITS:
        return len(digits.load_digits_split("train")[1])
    return len(folder_train_val(data)[0].samples)


def typical_short_side(paths: list[str]) -> int:
    """The median short side, in pixels, of up to ``SIZE_SAMPLE`` of the images (only their headers are read)."""
    step = max(1, len(paths) // SIZE_SAMPLE)
    sides = []
    for path in paths[::step][:SIZE_SAMPLE]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except OSError:
            continue  # an unreadable file is reported (and skipped) when training reads it
    if not sides:
        raise ValueError(f"none of the training images could be read, e.g. {paths[0]}")
    return int(statistics.median(sides))


def check_model_fits(config: TrainConfig) -> None:
    """Raise ValueError, with the reason and what to change, unless the run's model can be built at its image size
    (with --init the architecture comes from the weights, checked when they are loaded)."""
    if config.init:
        return
    try:
        run_model_config(config, num_classes=1, in_chans=3)
    except ValueError as error:
        model = f"model {config.model}" if config.model else f"the {config.recipe} recipe's model"
        hint = ""
        if config.data in (None, DIGITS):
            hint = (
                f"; the embedded digits are {digits.IMG_SIZE} x {digits.IMG_SIZE} px: give a named model a small "
                "patch too (--set model_args.patch_size=2), or train on your own images (--data DIR)"
            )
        raise ValueError(f"{model} does not fit {config.img_size} px images: {error}{hint}") from None


def _model_patch(config: TrainConfig) -> int:
    if config.model:
        return resolve_config(config.model, **config.model_args).patch_size[0]
    return ViLConfig.from_dict(config.model_args).patch_size[0]

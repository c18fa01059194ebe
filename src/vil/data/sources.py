"""Where training data comes from: the embedded digits (no ``--data``) or an image folder in the ImageNet layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from . import digits
from .folder import (
    CARVE_FRACTION,
    CARVE_SEED,
    BadFile,
    ImageFolderDataset,
    carve_validation,
    optional_split_dir,
    scan_folder,
    split_dir,
)
from .preprocessing import Preprocessing, eval_transform, train_transform

DIGITS = "digits"  # the name of the embedded dataset in saved configs and checkpoints


@dataclass
class DataSplits:
    """The datasets of a run and what a model trained on them needs to know later. ``val`` selects the best epoch;
    ``test`` (None when the data has none) is scored once, at the end.
    """

    train: Dataset
    val: Dataset
    test: Dataset | None
    classes: list[str]
    preprocessing: Preprocessing
    skipped: list[BadFile]  # files left out when the folders were scanned (unreadable ones are found later)
    name: str  # "digits" or the data directory
    val_source: str  # where the validation images come from, for the run's messages and config.json


def build_data_splits(data: str | None, img_size: int, augmentation: str, **augment_args) -> DataSplits:
    """Train, validation and test sets: ``data=None`` is the embedded digits (three fixed splits), else an image
    folder with ``train/``, ``val/`` (carved out of ``train/`` when missing) and optionally ``test/``.
    ``augment_args`` go to :func:`vil.data.preprocessing.train_transform`.
    """
    if data is None or data == DIGITS:
        if img_size != digits.IMG_SIZE:
            raise ValueError(
                f"the embedded digits are {digits.IMG_SIZE} x {digits.IMG_SIZE} images; got img_size={img_size}"
            )
        pre = Preprocessing(img_size=img_size, in_chans=1, mean=digits.MEAN, std=digits.STD)
        train = digits.DigitsDataset("train", train_transform(augmentation, pre, "tensor", **augment_args))
        val, test = (digits.DigitsDataset(split, eval_transform(pre, "tensor")) for split in ("val", "test"))
        val_source = f"{digits.VAL_FRACTION:.0%} of the training images, stratified, split seed {digits.SPLIT_SEED}"
        return DataSplits(train, val, test, list(digits.CLASS_NAMES), pre, [], DIGITS, val_source)

    pre = Preprocessing(img_size=img_size)  # RGB, ImageNet mean and std
    train_scan, val_scan, val_source = folder_train_val(data)
    test_dir = optional_split_dir(data, "test")
    test_scan = scan_folder(test_dir, classes=train_scan.classes) if test_dir else None
    train = ImageFolderDataset(train_scan, train_transform(augmentation, pre, "pil", **augment_args))
    val = ImageFolderDataset(val_scan, eval_transform(pre, "pil"))
    test = ImageFolderDataset(test_scan, eval_transform(pre, "pil")) if test_scan else None
    skipped = train_scan.skipped + val_scan.skipped + (test_scan.skipped if test_scan else [])
    return DataSplits(train, val, test, train_scan.classes, pre, skipped, str(data), val_source)


def folder_train_val(data: str | Path):
    """The training and validation scans of an image folder and where the validation images come from:
    ``data/val`` if it exists, else a fixed share of ``data/train`` (:func:`vil.data.folder.carve_validation`).
    """
    train_scan = scan_folder(split_dir(data, "train"))
    val_dir = optional_split_dir(data, "val")
    if val_dir is not None:
        return train_scan, scan_folder(val_dir, classes=train_scan.classes), str(val_dir)
    train_scan, val_scan = carve_validation(train_scan)
    source = f"{CARVE_FRACTION:.0%} of each class of {Path(data) / 'train'}, no val/ folder, split seed {CARVE_SEED}"
    return train_scan, val_scan, source


def build_eval_dataset(data: str | None, classes: list[str], pre: Preprocessing, split: str = "val") -> Dataset:
    """The dataset ``vil eval`` scores: the digits test split (``data=None``), ``data/<split>`` if it exists, or
    ``data`` itself as a folder of class folders (as the official ``eval.py`` takes the ImageNet val folder).
    """
    if data is None or data == DIGITS:
        if pre.in_chans != 1 or pre.img_size != digits.IMG_SIZE:
            raise ValueError("the embedded digits (8 x 8, grey) do not fit this model; pass --data DIR")
        return digits.DigitsDataset("test", eval_transform(pre, "tensor"))
    root = Path(data).expanduser()
    if not (root / split).is_dir() and (root / "train").is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(f"{root} has no '{split}' folder (found: {found}); choose one with --split")
    folder = root / split if (root / split).is_dir() else split_dir(root.parent, root.name)
    return ImageFolderDataset(scan_folder(folder, classes=classes), eval_transform(pre, "pil"))

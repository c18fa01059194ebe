"""Where training data comes from: the embedded digits (no ``--data``) or an image folder in the ImageNet layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from . import digits
from .folder import BadFile, ImageFolderDataset, scan_folder, split_dir
from .preprocessing import Preprocessing, eval_transform, train_transform

DIGITS = "digits"  # the name of the embedded dataset in saved configs and checkpoints


@dataclass
class DataSplits:
    """The datasets of a run and what a model trained on them needs to know later."""

    train: Dataset
    val: Dataset
    classes: list[str]
    preprocessing: Preprocessing
    skipped: list[BadFile]  # files left out when the folders were scanned (unreadable ones are found later)
    name: str  # "digits" or the data directory


def build_data_splits(data: str | None, img_size: int, augmentation: str, **augment_args) -> DataSplits:
    """Train and validation sets: ``data=None`` is the embedded digits (test split as validation), else an image
    folder with ``train/`` and ``val/``. ``augment_args`` go to :func:`vil.data.preprocessing.train_transform`.
    """
    if data is None or data == DIGITS:
        if img_size != digits.IMG_SIZE:
            raise ValueError(
                f"the embedded digits are {digits.IMG_SIZE} x {digits.IMG_SIZE} images; got img_size={img_size}"
            )
        pre = Preprocessing(img_size=img_size, in_chans=1, mean=digits.MEAN, std=digits.STD)
        train = digits.DigitsDataset("train", train_transform(augmentation, pre, "tensor", **augment_args))
        val = digits.DigitsDataset("test", eval_transform(pre, "tensor"))
        return DataSplits(train, val, list(digits.CLASS_NAMES), pre, [], DIGITS)

    pre = Preprocessing(img_size=img_size)  # RGB, ImageNet mean and std
    train_scan = scan_folder(split_dir(data, "train"))
    val_scan = scan_folder(split_dir(data, "val"), classes=train_scan.classes)
    train = ImageFolderDataset(train_scan, train_transform(augmentation, pre, "pil", **augment_args))
    val = ImageFolderDataset(val_scan, eval_transform(pre, "pil"))
    return DataSplits(train, val, train_scan.classes, pre, train_scan.skipped + val_scan.skipped, str(data))


def build_eval_dataset(data: str | None, classes: list[str], pre: Preprocessing, split: str = "val") -> Dataset:
    """The dataset ``vil eval`` scores: the digits test split (``data=None``), ``data/<split>`` if it exists, or
    ``data`` itself as a folder of class folders (as the official ``eval.py`` takes the ImageNet val folder).
    """
    if data is None or data == DIGITS:
        if pre.in_chans != 1 or pre.img_size != digits.IMG_SIZE:
            raise ValueError("the embedded digits (8 x 8, grey) do not fit this model; pass --data DIR")
        return digits.DigitsDataset("test", eval_transform(pre, "tensor"))
    root = Path(data).expanduser()
    folder = root / split if (root / split).is_dir() else split_dir(root.parent, root.name)
    return ImageFolderDataset(scan_folder(folder, classes=classes), eval_transform(pre, "pil"))

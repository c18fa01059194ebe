"""The embedded dataset: scikit-learn's handwritten digits, 1,797 grey 8 x 8 images of the digits 0-9.

The images ship inside scikit-learn, so the default run needs no download. Three fixed splits, drawn by
``SPLIT_SEED`` (stratified), independent of the training seed: a test split of 20 % (360 images), scored once at the
end of a run, and of the remaining 1,437 a validation split of 20 % (288 images), on which a run selects its best
epoch, and the 1,149 training images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

CLASS_NAMES = tuple(str(digit) for digit in range(10))
SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
TEST_FRACTION = 0.2  # of all images
VAL_FRACTION = 0.2  # of the images left after the test split
IMG_SIZE = 8
# Pixel statistics of all 1,797 images scaled to [0, 1] (scikit-learn stores intensities 0..16).
MEAN = (0.3053,)
STD = (0.3760,)


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 8, 8) in [0, 1] and labels (N,) of one split: "train" (1,149 images), "val" (288), "test" (360)."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {list(SPLITS)}")
    from sklearn.datasets import load_digits  # a base dependency: the default run needs it
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, digits.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=rest_y
    )
    x, y = {"train": (train_x, train_y), "val": (val_x, val_y), "test": (test_x, test_y)}[split]
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


class DigitsDataset(Dataset):
    """One split of the digits as (image tensor (1, 8, 8), label) pairs, with an optional tensor transform."""

    def __init__(self, split: str, transform=None):
        self.split = split
        self.images, self.labels = load_digits_split(split)
        self.transform = transform
        self.classes = list(CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def export_image_folder(root: str | Path) -> Path:
    """Write the digits as PNG files in the folder layout: ``root/{train,val,test}/<digit>/<index>.png``.

    Handy to try the folder pipeline (``vil train --data root``) on real files, with the same three splits.
    """
    from PIL import Image

    root = Path(root)
    for split in SPLITS:
        images, labels = load_digits_split(split)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / split / CLASS_NAMES[int(label)] / f"{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = (image[0].numpy() * 255.0).round().astype(np.uint8)
            Image.fromarray(pixels).save(path)
    return root

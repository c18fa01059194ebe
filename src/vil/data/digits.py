"""The embedded dataset: scikit-learn's handwritten digits, 1,797 grey 8 x 8 images of the digits 0-9.

The images ship inside scikit-learn, so the default run needs no download. The held-out test split is fixed by
``SPLIT_SEED`` (stratified, 20 %), independent of the training seed, so every run is scored on the same 360 images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

CLASS_NAMES = tuple(str(digit) for digit in range(10))
SPLITS = ("train", "test")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
IMG_SIZE = 8
# Pixel statistics of all 1,797 images scaled to [0, 1] (scikit-learn stores intensities 0..16).
MEAN = (0.3053,)
STD = (0.3760,)


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 8, 8) in [0, 1] and labels (N,) of one split: "train" (1,437 images) or "test" (360)."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {list(SPLITS)}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError("the embedded digits ship with scikit-learn: pip install 'vil[train]'") from error

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    x, y = (train_x, train_y) if split == "train" else (test_x, test_y)
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
    """Write the digits as PNG files in the ImageNet folder layout: ``root/{train,val}/<digit>/<index>.png``.

    Handy to try the folder pipeline (``vil train --data root``) on real files; the test split becomes ``val``.
    """
    from PIL import Image

    root = Path(root)
    for split, folder in (("train", "train"), ("test", "val")):
        images, labels = load_digits_split(split)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / folder / CLASS_NAMES[int(label)] / f"{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = (image[0].numpy() * 255.0).round().astype(np.uint8)
            Image.fromarray(pixels).save(path)
    return root

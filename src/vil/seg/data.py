"""Datasets in the ADE20K layout: ``root/images/<split>/*.jpg`` with ``root/annotations/<split>/*.png`` masks.

An annotation pixel holds 0 ("other", ignored) or the class number 1..N, which becomes label 0..N-1; ignored pixels
get ``IGNORE_INDEX``. Layout problems (no such folder, no images) stop with a message naming the folder. Single bad
samples do not: an image without a mask, an unreadable image or mask, or a mask of another size than its image is
skipped and counted (``BadFile``, as the classification folders). A label value above the class count means the
dataset and the class count disagree: that stops the run, naming the file and the value (``check_bad_samples``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..data.folder import IMAGE_EXTENSIONS, BadFile, read_image

IGNORE_INDEX = 255
SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}
LAYOUT = "DIR/images/{training,validation}/<name>.jpg and DIR/annotations/{training,validation}/<name>.png"


@dataclass(frozen=True)
class BadLabels(BadFile):
    """A mask with label values the class count does not allow: fatal (the data or --num-classes is wrong)."""


def scan_split(root: str | Path, split: str) -> tuple[list[tuple[str, str]], list[BadFile]]:
    """(image, mask) path pairs of a split, matched by file stem, and the images without a mask (skipped)."""
    root = Path(root).expanduser()
    folder = SPLITS.get(split)
    if folder is None:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(set(SPLITS))}")
    images_dir, masks_dir = root / "images" / folder, root / "annotations" / folder
    for directory in (images_dir, masks_dir):
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory} does not exist: expected the ADE20K layout {LAYOUT}")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == ".png"}
    pairs, skipped = [], []
    for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
        if image.stem in masks:
            pairs.append((str(image), str(masks[image.stem])))
        else:
            skipped.append(BadFile(str(image), f"no annotation {masks_dir / (image.stem + '.png')}"))
    if not pairs:
        raise ValueError(f"{images_dir} has no images with annotations in {masks_dir} (layout {LAYOUT})")
    return pairs, skipped


class BadLabelValue(ValueError):
    """An annotation value above the class count."""


def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """Labels (H, W) uint8 of an annotation PNG: 0 -> IGNORE_INDEX, k -> k - 1. ValueError: unreadable or not one
    channel; BadLabelValue: a value above ``num_classes``."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I;16", "I"):
                raise ValueError(f"annotation has mode {image.mode}: expected one channel of class numbers")
            values = np.asarray(image)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read annotation: {error}") from None
    top = int(values.max()) if values.size else 0
    if top > num_classes:
        raise BadLabelValue(
            f"label value {top} above the {num_classes} classes (allowed: 0 = ignored, 1..{num_classes})"
        )
    labels = values.astype(np.int64) - 1
    labels[values == 0] = IGNORE_INDEX
    return labels.astype(np.uint8)


class SegmentationDataset(Dataset):
    """(image, mask) samples of one split; ``transform`` takes and returns (tv_tensors.Image, tv_tensors.Mask)."""

    def __init__(self, root: str | Path, split: str, classes: list[str], transform=None):
        self.root, self.split, self.classes = Path(root), split, list(classes)
        if len(self.classes) > IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX} classes fit the uint8 masks, got {len(self.classes)}")
        self.samples, self.skipped = scan_split(root, split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image_path, mask_path = self.samples[index]
        try:
            image = read_image(image_path).convert("RGB")
        except ValueError as error:
            return BadFile(image_path, str(error))
        try:
            labels = read_mask(mask_path, len(self.classes))
        except BadLabelValue as error:
            return BadLabels(mask_path, str(error))
        except ValueError as error:
            return BadFile(mask_path, str(error))
        if labels.shape != (image.height, image.width):
            reason = f"annotation is {labels.shape[1]} x {labels.shape[0]}, its image {image.width} x {image.height}"
            return BadFile(mask_path, reason)
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (3, H, W) uint8
        sample = tv_tensors.Image(pixels), tv_tensors.Mask(torch.from_numpy(labels))
        return self.transform(*sample) if self.transform is not None else sample


def check_bad_samples(bad: list[BadFile]) -> list[BadFile]:
    """Raise for a fatal bad sample (label values out of range); return the ones to skip and count."""
    for item in bad:
        if isinstance(item, BadLabels):
            raise ValueError(f"{item.path}: {item.reason}; pass the right --num-classes or a classes.txt")
    return bad


def collate_samples(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[BadFile]]:
    """Stack (image, mask) samples of one size into (B, 3, H, W) and (B, H, W) int64; bad samples come back listed."""
    bad = [item for item in batch if isinstance(item, BadFile)]
    good = [item for item in batch if not isinstance(item, BadFile)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images = torch.stack([image.as_subclass(torch.Tensor) for image, _ in good])
    masks = torch.stack([mask.as_subclass(torch.Tensor) for _, mask in good]).long()
    return images, masks, bad

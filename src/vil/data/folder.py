"""Image folders in the ImageNet layout (``root/<split>/<class>/<image>``), checked up front, read leniently.

``root/train`` is required; ``root/val`` (model selection) is carved out of ``root/train`` when it is missing
(:func:`carve_validation`); ``root/test``, if there, is scored once at the end of a run and never used before.

Layout problems (a missing or empty directory, a class folder without images) stop the run with a message naming
the folder. Single bad files do not: a file without an image extension is reported when the folder is scanned, an
unreadable or corrupt image when it is first loaded; both are skipped and counted (``summary.json``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "DIR/train/<class>/<image>, optionally DIR/val/<class>/<image> and DIR/test/<class>/<image>"
CARVE_FRACTION = 0.1  # of each class of DIR/train becomes the validation split when DIR/val is missing
CARVE_SEED = 0  # fixed, independent of the training seed: every run of a folder gets the same split


@dataclass(frozen=True)
class BadFile:
    """A file that was skipped: its path and why."""

    path: str
    reason: str


@dataclass
class FolderScan:
    """The images of one split: (path, class index) pairs, the class names, and the files that were skipped."""

    samples: list[tuple[str, int]]
    classes: list[str]
    skipped: list[BadFile]


def split_dir(root: str | Path, split: str) -> Path:
    """``root/split``, with a message explaining the expected layout when it is missing."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data directory {root} does not exist (expected the layout {LAYOUT})")
    if not root.is_dir():
        raise ValueError(f"data directory {root} is a file, not a directory (expected the layout {LAYOUT})")
    folder = root / split
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"{root} has no '{split}' folder (found folders: {found or 'none'}); expected the layout {LAYOUT}"
        )
    return folder


def optional_split_dir(root: str | Path, split: str) -> Path | None:
    """``root/split`` if it is a folder, else None."""
    folder = Path(root).expanduser() / split
    return folder if folder.is_dir() else None


def carve_validation(scan: FolderScan, fraction: float = CARVE_FRACTION, seed: int = CARVE_SEED):
    """Split a training scan into (train, validation) scans: ``fraction`` of each class (rounded, at least one image
    of every class with two or more), drawn by ``seed`` from the class's sorted paths, so the split depends only on
    the files.
    """
    by_class: dict[int, list[tuple[str, int]]] = {}
    for sample in scan.samples:
        by_class.setdefault(sample[1], []).append(sample)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        samples = sorted(by_class[label])
        rng.shuffle(samples)
        count = max(1, round(fraction * len(samples))) if len(samples) > 1 else 0
        val += samples[:count]
        train += samples[count:]
    return FolderScan(sorted(train), scan.classes, scan.skipped), FolderScan(sorted(val), scan.classes, [])


def scan_folder(folder: str | Path, classes: list[str] | None = None) -> FolderScan:
    """Find the images under ``folder/<class>/``. With ``classes`` (the training classes), the labels follow their
    order and every class folder must be one of them; otherwise the classes are the sorted folder names.
    """
    folder = Path(folder)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{folder} has no class folders: expected {folder}/<class>/<image> (layout {LAYOUT})")
    if classes is None:
        classes = [d.name for d in class_dirs]
    index = {name: i for i, name in enumerate(classes)}
    unknown = [d.name for d in class_dirs if d.name not in index]
    if unknown:
        raise ValueError(f"{folder} has class folders the model does not know: {unknown}; known classes: {classes}")

    samples, skipped, empty = [], [], []
    for class_dir in class_dirs:
        count = 0
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append((str(path), index[class_dir.name]))
                count += 1
            else:
                skipped.append(BadFile(str(path), f"not an image file (extensions: {', '.join(IMAGE_EXTENSIONS)})"))
        if count == 0:
            empty.append(str(class_dir))
    if empty:
        raise ValueError(
            f"class folders without images: {empty}; add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the folders"
        )
    for bad in skipped:
        logger.warning("skipping %s: %s", bad.path, bad.reason)
    return FolderScan(samples, list(classes), skipped)


def read_image(path: str | Path) -> Image.Image:
    """The decoded image at ``path``; a file that cannot be read raises ValueError("cannot read image: ...")."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated or corrupt file fails here, not later in a transform
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image: {error}") from None


class ImageFolderDataset(Dataset):
    """(image, label) pairs from a scan; an image that cannot be decoded comes back as a ``BadFile`` instead."""

    def __init__(self, scan: FolderScan, transform=None):
        self.samples = scan.samples
        self.classes = scan.classes
        self.skipped = list(scan.skipped)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = read_image(path)
        except ValueError as error:
            return BadFile(path, str(error))
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def collate_skipping_bad_files(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[BadFile]]:
    """Collate (image, label) pairs into tensors, leaving out the ``BadFile`` entries, which come back as a list."""
    bad = [item for item in batch if isinstance(item, BadFile)]
    good = [item for item in batch if not isinstance(item, BadFile)]
    if not good:
        raise ValueError(
            f"none of the {len(batch)} images of a batch could be read, e.g. {bad[0].path}: {bad[0].reason}"
        )
    images, labels = default_collate(good)
    return images, labels, bad

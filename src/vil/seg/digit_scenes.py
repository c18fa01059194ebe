"""The embedded segmentation data: scenes composed from scikit-learn's handwritten digits, in the ADE20K layout.

Each scene is a black canvas with 1-3 digits of 8-16 px at random places (not overlapping); every stroke pixel
(intensity >= 0.5 after resizing) is labelled with its digit, every other pixel is background, so there are 11
classes and no ignored pixels. Training scenes use only the digits' training images, the held-out scenes (the
``validation`` split of the layout) only the test images (``vil.data.digits``: a fixed stratified 20 % split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image

from ..data.digits import load_digits_split
from .classes import CLASSES_FILE

CLASS_NAMES = ("background",) + tuple(str(d) for d in range(10))
STROKE = 0.5  # a pixel of a resized digit belongs to the stroke from this intensity (0..1)


def compose_scene(digits, labels, rng: np.random.Generator, canvas: int, sizes=(8, 16), counts=(1, 3)):
    """One scene: (canvas, canvas) uint8 grey image and class labels (0 background, 1 + d for digit d)."""
    image = np.zeros((canvas, canvas), np.float32)
    classes = np.zeros((canvas, canvas), np.uint8)
    taken = np.zeros((canvas, canvas), bool)
    for _ in range(rng.integers(counts[0], counts[1] + 1)):
        index, size = rng.integers(len(digits)), int(rng.integers(sizes[0], sizes[1] + 1))
        glyph = F.interpolate(digits[index][None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        glyph = glyph.clamp(0, 1).numpy()
        for _attempt in range(20):  # a free place for it, else leave it out
            top, left = rng.integers(0, canvas - size + 1, size=2)
            window = np.s_[top : top + size, left : left + size]
            if not taken[window].any():
                break
        else:
            continue
        taken[window] = True
        image[window] = glyph
        classes[window] = np.where(glyph >= STROKE, 1 + int(labels[index]), 0)
    return (image * 255).round().astype(np.uint8), classes


def write_digit_scenes(root: str | Path, train_scenes: int, test_scenes: int, canvas: int = 32, seed: int = 0) -> Path:
    """Write the scenes to ``root`` in the ADE20K layout (annotations hold class + 1; 0 would be ignored), with a
    classes.txt. The same arguments write the same files."""
    root = Path(root)
    (root / CLASSES_FILE).parent.mkdir(parents=True, exist_ok=True)
    for split, folder, count in (("train", "training", train_scenes), ("test", "validation", test_scenes)):
        digits, labels = load_digits_split(split)
        rng = np.random.default_rng([seed, len(folder)])
        for directory in ("images", "annotations"):
            (root / directory / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, classes = compose_scene(digits, labels, rng, canvas)
            name = f"{split}_{index:05d}"
            Image.fromarray(np.repeat(image[..., None], 3, axis=2)).save(root / "images" / folder / f"{name}.png")
            Image.fromarray(classes + 1).save(root / "annotations" / folder / f"{name}.png")
    (root / CLASSES_FILE).write_text("".join(f"{name}\n" for name in CLASS_NAMES))
    return root

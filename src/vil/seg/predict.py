"""Prediction pictures: a label PNG with a palette, and a side-by-side figure (image, overlay, legend) per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from ..data.folder import read_image
from ..utils.figures import pyplot, save_figure
from .files import SavedSegmenter
from .inference import InferenceSettings, predict_probabilities
from .transforms import eval_transform

OVERLAY_ALPHA = 0.55


def palette(count: int = 256) -> np.ndarray:
    """(count, 3) uint8 colours, the PASCAL VOC bit-interleaving scheme (class 0 black)."""
    colours = np.zeros((count, 3), np.uint8)
    for index in range(count):
        value, shift = index, 7
        while value:
            for channel in range(3):
                colours[index, channel] |= ((value >> channel) & 1) << shift
            value, shift = value >> 3, shift - 1
    return colours


def predict_labels(saved: SavedSegmenter, image: Image.Image, settings: InferenceSettings, device) -> np.ndarray:
    """Class indices (H, W) at the image's own size."""
    scale = tuple((saved.inference or {}).get("scale", (2048, 512)))
    pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    dummy = tv_tensors.Mask(torch.zeros(pixels.shape[-2:], dtype=torch.uint8))
    normalised, _ = eval_transform(scale, saved.mean, saved.std)(tv_tensors.Image(pixels), dummy)
    batch = normalised.as_subclass(torch.Tensor)[None].to(device)
    probs = predict_probabilities(saved.model.to(device).eval(), batch, pixels.shape[-2:], settings)
    return probs[0].argmax(0).cpu().numpy().astype(np.uint8)


def write_label_png(labels: np.ndarray, path: Path) -> Path:
    image = Image.fromarray(labels, mode="P")
    image.putpalette(palette().flatten().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_side_by_side(image: Image.Image, labels: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """Image | overlay | legend of the classes present in the prediction."""
    plt = pyplot("prediction pictures")
    from matplotlib.patches import Patch

    rgb = np.asarray(image.convert("RGB"))
    colours = palette()
    overlay = (rgb * (1 - OVERLAY_ALPHA) + colours[labels] * OVERLAY_ALPHA).astype(np.uint8)
    present = [int(c) for c in np.unique(labels)]
    fig, (ax_image, ax_overlay, ax_legend) = plt.subplots(1, 3, figsize=(9, 3.2), constrained_layout=True)
    ax_image.imshow(rgb, interpolation="nearest")
    ax_image.set_title(title, fontsize=9)
    ax_overlay.imshow(overlay, interpolation="nearest")
    ax_overlay.set_title("prediction", fontsize=9)
    handles = [Patch(color=colours[c] / 255, label=classes[c]) for c in present]
    ax_legend.legend(handles=handles, loc="center", frameon=False, fontsize=9, title="classes")
    for ax in (ax_image, ax_overlay, ax_legend):
        ax.axis("off")
    return save_figure(fig, path, dpi=120)


def predict_files(saved: SavedSegmenter, images: list[Path], out_dir: Path, settings: InferenceSettings, device):
    """For each image: OUT/<stem>.png (labels, palette) and OUT/<stem>_side_by_side.png; returns the paths."""
    written = []
    for path in images:
        image = read_image(path)
        labels = predict_labels(saved, image, settings, device)
        label_path = write_label_png(labels, out_dir / f"{Path(path).stem}.png")
        picture = write_side_by_side(image, labels, saved.classes, out_dir / f"{Path(path).stem}_side_by_side.png",
                                     Path(path).name)  # fmt: skip
        written.append((label_path, picture, labels))
    return written

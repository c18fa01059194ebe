"""Joint image + mask transforms (torchvision.transforms.v2 on tv_tensors.Image / tv_tensors.Mask), mmsegmentation's
ADE20K pipeline: random resize (scale 2048 x 512, ratio 0.5-2), random crop with the category-ratio rule, flip,
photometric distortion, normalise, pad with the ignore label. v2's kernels resize masks with nearest neighbours and
leave them out of the colour transforms; the two rules v2 lacks are the small transforms below.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .data import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fit_scale(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """The size of (height, width) resized with its aspect kept to fit ``scale`` = (long side, short side), as
    mmsegmentation's keep-ratio rescale."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RandomRatioResize(v2.Transform):
    """Resize to fit ``scale`` times a ratio drawn uniformly from ``ratio_range`` (aspect kept)."""

    def __init__(self, scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0)):
        super().__init__()
        self.scale, self.ratio_range = scale, ratio_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        ratio = float(torch.empty(()).uniform_(*self.ratio_range))
        size = fit_scale(height, width, (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        return dict(size=size, same=size == (height, width))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["same"]:
            return inpt
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)


class RandomCropCategoryRatio(v2.Transform):
    """A random crop of at most ``size`` in which no class covers more than ``cat_max_ratio`` of the labelled pixels
    (up to 10 tries, then the last one; mmsegmentation's RandomCrop)."""

    TRIES = 10

    def __init__(self, size: int, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.size, self.cat_max_ratio, self.ignore_index = size, cat_max_ratio, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        mask = next(x for x in flat_inputs if isinstance(x, tv_tensors.Mask))
        crop_h, crop_w = min(self.size, height), min(self.size, width)
        for _ in range(self.TRIES):
            top = int(torch.randint(height - crop_h + 1, ()))
            left = int(torch.randint(width - crop_w + 1, ()))
            if self.cat_max_ratio >= 1 or self._balanced(mask[..., top : top + crop_h, left : left + crop_w]):
                break
        return dict(top=top, left=left, height=crop_h, width=crop_w)

    def _balanced(self, labels: torch.Tensor) -> bool:
        counts = torch.bincount(labels[labels != self.ignore_index].flatten().long())
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() < self.cat_max_ratio * counts.sum()

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class PadToMultiple(v2.Transform):
    """Pad bottom and right to at least ``size`` and to a multiple of ``multiple``: images with 0 (after
    normalisation: the mean), masks with the ignore label."""

    def __init__(self, size: int = 0, multiple: int = 1, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.size, self.multiple, self.ignore_index = size, multiple, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        target = [math.ceil(max(side, self.size) / self.multiple) * self.multiple for side in (height, width)]
        return dict(padding=[0, 0, target[1] - width, target[0] - height])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0
        return self._call_kernel(F.pad, inpt, params["padding"], fill=fill)


def train_transform(
    crop_size: int,
    scale: tuple[int, int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    hflip: float = 0.5,
    color_jitter: tuple[float, float, float, float] = (0.125, 0.5, 0.5, 0.1),
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> v2.Compose:
    """The training pipeline: uint8 (image, mask) in, normalised float image and int64 mask of crop_size out.
    Steps that would change nothing (no flips, no colour change) are left out: they cost ~1 ms a sample."""
    steps = [RandomRatioResize(scale, ratio_range), RandomCropCategoryRatio(crop_size, cat_max_ratio)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if any(color_jitter):
        steps.append(v2.ColorJitter(*color_jitter))  # images only: masks pass through
    steps += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean, std),
        PadToMultiple(crop_size),
    ]
    return v2.Compose(steps)


def eval_transform(
    scale: tuple[int, int] = (2048, 512), mean: tuple[float, ...] = IMAGENET_MEAN, std=IMAGENET_STD
) -> v2.Compose:
    """Evaluation: the image resized to fit ``scale`` and normalised; the mask keeps its original size (the metric is
    computed there, as mmsegmentation)."""
    return v2.Compose([
        ResizeImageOnly(scale),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean, std),
    ])  # fmt: skip


class ResizeImageOnly(v2.Transform):
    """Resize the image (not the mask) to fit ``scale`` with its aspect kept."""

    def __init__(self, scale: tuple[int, int]):
        super().__init__()
        self.scale = scale

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image))
        return dict(size=fit_scale(*image.shape[-2:], self.scale))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)

"""Inference over whole images or sliding windows, at several scales and flipped, and evaluation over a dataset.

Class probabilities (softmax) are averaged over windows, scales and flips, then resized to the label size, where the
metric is computed (as mmsegmentation). Images are padded bottom/right to what the backbone tiles; the padding is
cut off the logits again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..precision import autocast
from .data import check_bad_samples
from .heads import resize
from .metric import SegmentationMetric


@dataclass(frozen=True)
class InferenceSettings:
    mode: str = "whole"  # or "slide"
    crop_size: int = 512
    stride: int = 341
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False


def _pad_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.pad(images, (0, width - images.shape[-1], 0, height - images.shape[-2]))


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def whole_logits(model, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> logits (B, K, H, W), padding to a multiple of the backbone's patch."""
    height, width = images.shape[-2:]
    multiple = model.size_multiple
    padded = _pad_to(images, _round_up(height, multiple), _round_up(width, multiple))
    return model(padded)[..., :height, :width]


def slide_logits(model, images: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Windows of crop x crop at ``stride`` (the last flush with the border), logits averaged where they overlap."""
    height, width = images.shape[-2:]
    padded_h, padded_w = max(height, crop), max(width, crop)
    images = _pad_to(images, padded_h, padded_w)
    rows = max(padded_h - crop + stride - 1, 0) // stride + 1
    cols = max(padded_w - crop + stride - 1, 0) // stride + 1
    total = count = None
    for row in range(rows):
        for col in range(cols):
            bottom, right = min(row * stride + crop, padded_h), min(col * stride + crop, padded_w)
            top, left = max(bottom - crop, 0), max(right - crop, 0)
            logits = whole_logits(model, images[..., top:bottom, left:right])
            if total is None:
                total = logits.new_zeros(*logits.shape[:2], padded_h, padded_w)
                count = logits.new_zeros(1, 1, padded_h, padded_w)
            total[..., top:bottom, left:right] += logits
            count[..., top:bottom, left:right] += 1
    return (total / count)[..., :height, :width]


@torch.no_grad()
def predict_probabilities(model, images: torch.Tensor, out_size, settings: InferenceSettings) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> class probabilities (B, K, *out_size), averaged over scales and flips."""
    height, width = images.shape[-2:]
    total = None
    for scale in settings.scales:
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        scaled = images if size == (height, width) else resize(images, size)
        for flip in (False, True) if settings.flip else (False,):
            batch = scaled.flip(-1) if flip else scaled
            if settings.mode == "slide":
                logits = slide_logits(model, batch, settings.crop_size, settings.stride)
            else:
                logits = whole_logits(model, batch)
            probs = resize(logits.float(), tuple(out_size)).softmax(1)
            probs = probs.flip(-1) if flip else probs
            total = probs if total is None else total + probs
    return total / (len(settings.scales) * (2 if settings.flip else 1))


def evaluate(model, loader, device, amp_dtype, settings: InferenceSettings, classes: list[str]) -> dict:
    """mIoU, aAcc, mAcc and per-class IoU / accuracy over ``loader`` (image batches, original-size masks), and the
    samples that were skipped."""
    model.eval()
    metric = SegmentationMetric(len(classes))
    skipped = []
    for images, masks, bad in loader:
        skipped += check_bad_samples(bad)
        if not len(images):
            continue
        images = images.to(device)
        with autocast(device, amp_dtype):
            probs = predict_probabilities(model, images, masks.shape[-2:], settings)
        metric.update(probs.argmax(1).cpu(), masks)
    return dict(metric.compute(classes), skipped=skipped, areas=metric.areas)

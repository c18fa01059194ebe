"""Segmentation metrics as mmsegmentation defines them: per class, intersection and union (and the labelled and
predicted areas) summed over the whole set first; then IoU and accuracy per class, and their means over the classes
where they are defined (a class absent from both the labels and the predictions has no IoU).

aAcc = correct labelled pixels / labelled pixels; mIoU = mean IoU; mAcc = mean per-class recall. All fractions.
"""

from __future__ import annotations

import math

import torch

from .data import IGNORE_INDEX


class SegmentationMetric:
    """Accumulates per-class areas over batches (``update``), reports with ``compute``; ``state``/``merge`` let
    processes sum their areas (data-parallel evaluation)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.areas = torch.zeros(3, num_classes, dtype=torch.float64)  # intersection, predicted, labelled

    def update(self, pred: torch.Tensor, labels: torch.Tensor) -> None:
        """pred, labels: (..., H, W) class indices; labels equal to ignore_index are left out."""
        if pred.shape != labels.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and labels {tuple(labels.shape)} differ in shape")
        keep = labels != self.ignore_index
        pred, labels = pred[keep].long(), labels[keep].long()
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"label {int(labels.max())} outside the {self.num_classes} classes")
        hit = pred[pred == labels]
        for row, values in enumerate((hit, pred, labels)):
            self.areas[row] += torch.bincount(values.cpu(), minlength=self.num_classes)[: self.num_classes].double()

    def merge(self, areas: torch.Tensor) -> None:
        self.areas += areas

    def compute(self, class_names: list[str] | None = None) -> dict:
        intersection, predicted, labelled = self.areas
        union = predicted + labelled - intersection
        iou = _ratio(intersection, union)
        acc = _ratio(intersection, labelled)
        total = float(labelled.sum())
        names = class_names or [str(i) for i in range(self.num_classes)]
        return dict(
            miou=_nanmean(iou),
            aacc=float(intersection.sum()) / total if total else None,
            macc=_nanmean(acc),
            iou={name: value for name, value in zip(names, iou, strict=True)},
            acc={name: value for name, value in zip(names, acc, strict=True)},
            pixels=int(total),
        )


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> list[float | None]:
    return [float(n / d) if d > 0 else None for n, d in zip(numerator.tolist(), denominator.tolist(), strict=True)]


def _nanmean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return sum(defined) / len(defined) if defined else None

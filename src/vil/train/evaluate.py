"""Top-1 / top-5 accuracy and loss of a classifier over a data loader, exact across processes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..data.folder import BadFile
from ..precision import autocast
from .distributed import DistEnv, all_gather_objects, all_reduce_sum

TOP5_MIN_CLASSES = 5  # top-5 accuracy is reported only for more classes than this


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    env: DistEnv | None = None,
) -> dict:
    """Score ``model`` on batches of (images, labels, skipped files); returns ``top1`` and ``top5`` in percent
    (``top5`` None for five classes or fewer, where it is 100 % by construction), the mean cross-entropy ``loss``,
    the number of images ``count`` and the ``skipped`` files (with ``env``: summed
    over all processes, each of which scored its own shard).
    """
    model.eval()
    # summed on the device and read once at the end: a read per batch would wait for the GPU every batch
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits
    count = classes = 0
    skipped: list[BadFile] = []
    for images, labels, bad in batches:
        skipped.extend(bad)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        classes = logits.shape[1]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        batch_totals = (F.cross_entropy(logits, labels, reduction="sum"), hits[:, 0].sum(), hits.any(dim=1).sum())
        totals += torch.stack([t.double() for t in batch_totals])
        count += len(labels)
    loss_sum, correct1, correct5 = totals.tolist()
    if env is not None:
        correct1, correct5, loss_sum, count = all_reduce_sum([correct1, correct5, loss_sum, count], env)
        skipped = [b for rank_bad in all_gather_objects(skipped, env) for b in rank_bad]
    if count == 0:
        raise ValueError("no images to evaluate")
    return dict(
        top1=100.0 * correct1 / count,
        top5=100.0 * correct5 / count if classes > TOP5_MIN_CLASSES else None,
        loss=loss_sum / count,
        count=int(count),
        skipped=skipped,
    )


def format_accuracy(top1: float, top5: float | None) -> str:
    """``top-1 99.44%  top-5 100.00%``, without the top-5 part where there is none (five classes or fewer)."""
    text = f"top-1 {top1:.2f}%"
    return text if top5 is None else f"{text}  top-5 {top5:.2f}%"

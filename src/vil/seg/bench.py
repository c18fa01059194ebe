"""Contenders of ``vil bench --task seg``: a ViL segmenter against the DeiT segmenter with the same neck and UperNet
head (``vil.bench.speed`` times them). Training steps keep BatchNorm statistics frozen: with one image a batch, the
pyramid pooling's 1 x 1 map has a single value per channel (and the recipe's batch of 16 is not what is timed)."""

from __future__ import annotations

from ..bench.speed import Contender
from .segmenter import create_segmenter

NUM_CLASSES = 150  # ADE20K


def seg_contenders(vil_name: str, baseline: str | None) -> list[Contender]:
    def build(name: str):
        return lambda size: create_segmenter(name, NUM_CLASSES, img_size=size)

    label = f"{vil_name} UperNet"
    baseline_label = f"{baseline} UperNet" if baseline else None
    contenders = [
        Contender(label, build(vil_name), baseline_label, freeze_batchnorm=True),
        Contender(f"{label} (grad ckpt)", build(vil_name), baseline_label, modes=("train",), grad_checkpointing=True,
                  freeze_batchnorm=True),
    ]  # fmt: skip
    if baseline:
        contenders.insert(0, Contender(baseline_label, build(baseline), None, freeze_batchnorm=True))
    return contenders

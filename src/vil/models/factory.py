"""create_model: build any named variant (or a config) in one line, with weights from vil.weights if asked."""

from __future__ import annotations

import os

import torch

from ..weights.pretrained import load_pretrained_model
from .config import ViLConfig
from .variants import resolve_config
from .vision_lstm import VisionLSTM


def count_parameters(config: ViLConfig) -> int:
    """The number of parameters of the model of ``config``, counted without allocating them."""
    with torch.device("meta"):
        return sum(p.numel() for p in VisionLSTM(config).parameters())


def create_model(
    name_or_config: str | ViLConfig, pretrained: bool | str | os.PathLike = False, **overrides
) -> VisionLSTM:
    """Build a ViL by name (see :func:`list_models`) or from a :class:`ViLConfig`, e.g.
    ``create_model("vil2_tiny_patch16_224", img_size=384, num_classes=10)``.

    pretrained: False (random init); True (download the variant's released ImageNet-1K weights through torch.hub,
        cached; ``"name.tag"`` picks another released checkpoint, see ``vil checkpoints``); or the path of an official
        checkpoint (``.th``) or of our safetensors file. The file must hold this architecture. With a name,
        ``img_size`` and ``num_classes`` are the file's unless overridden (a changed ``img_size`` resamples the
        position embedding, a changed ``num_classes`` gives a new head); a ViLConfig decides them itself.
    """
    if pretrained is not False and pretrained is not None:
        return load_pretrained_model(name_or_config, pretrained, **overrides)
    return VisionLSTM(resolve_config(name_or_config, **overrides))

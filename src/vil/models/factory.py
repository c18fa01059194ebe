"""create_model / list_models: build any named variant (or a config) in one line."""

from __future__ import annotations

import fnmatch
import os

import torch

from .config import ViLConfig
from .variants import VARIANTS, Variant, split_name
from .vision_lstm import VisionLSTM


def list_models(pattern: str = "*") -> list[str]:
    """Names of the variants matching a shell-style pattern, e.g. ``list_models("vil2_*")``."""
    return sorted(name for name in VARIANTS if fnmatch.fnmatch(name, pattern))


def resolve_variant(name: str) -> tuple[Variant, str | None]:
    """A variant name, optionally with a checkpoint tag ("vil2_tiny_patch16_224.in1k_e400") -> (variant, tag)."""
    variant_name, tag = split_name(name)
    if variant_name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    variant = VARIANTS[variant_name]
    if tag is not None:
        variant.checkpoint(tag)  # raises for an unknown tag, listing the known ones
    return variant, tag


def resolve_config(name_or_config: str | ViLConfig, **overrides) -> ViLConfig:
    """The config of a variant name (or a given config), with overrides applied."""
    if isinstance(name_or_config, ViLConfig):
        return name_or_config.replace(**overrides) if overrides else name_or_config
    variant, _ = resolve_variant(name_or_config)
    return variant.make_config(**overrides)


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
        from ..pretrained import load_pretrained_model  # imported here: it builds on this module

        return load_pretrained_model(name_or_config, pretrained, **overrides)
    return VisionLSTM(resolve_config(name_or_config, **overrides))

"""create_model / list_models: build any named variant (or a config) in one line."""

from __future__ import annotations

import fnmatch

from .config import ViLConfig
from .variants import VARIANTS
from .vision_lstm import VisionLSTM


def list_models(pattern: str = "*") -> list[str]:
    """Names of the variants matching a shell-style pattern, e.g. ``list_models("vil2_*")``."""
    return sorted(name for name in VARIANTS if fnmatch.fnmatch(name, pattern))


def resolve_config(name_or_config: str | ViLConfig, **overrides) -> ViLConfig:
    """The config of a variant name (or a given config), with overrides applied."""
    if isinstance(name_or_config, ViLConfig):
        return name_or_config.replace(**overrides) if overrides else name_or_config
    if name_or_config not in VARIANTS:
        raise ValueError(f"unknown model {name_or_config!r}; valid names: {', '.join(list_models())}")
    return VARIANTS[name_or_config].make_config(**overrides)


def create_model(name_or_config: str | ViLConfig, pretrained: bool | str = False, **overrides) -> VisionLSTM:
    """Build a ViL by name (see :func:`list_models`) or from a :class:`ViLConfig`, e.g.
    ``create_model("vil2_tiny_patch16_224", img_size=384, num_classes=10)``.
    """
    config = resolve_config(name_or_config, **overrides)
    if pretrained:
        raise NotImplementedError("pretrained weights are not available yet")
    return VisionLSTM(config)

"""The named ViL variants of the paper: one table, from which the factory, CLI, hubconf and timm names come, and
the resolution of a name ("variant" or "variant.tag") to its variant and config.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from .config import ViLConfig

DOWNLOAD_ROOT = "https://ml.jku.at/research/vision_lstm/download/"


@dataclass(frozen=True)
class Checkpoint:
    """One released ImageNet-1K checkpoint of the official code."""

    tag: str  # name suffix after "<variant>.": e.g. "in1k", "in1k_e400"
    file: str  # file name under DOWNLOAD_ROOT
    top1: float  # ImageNet-1K top-1 reported by the authors
    official_name: str  # the official torch.hub entry point

    @property
    def url(self) -> str:
        return DOWNLOAD_ROOT + self.file


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    config: dict
    checkpoints: tuple[Checkpoint, ...] = field(default_factory=tuple)

    def make_config(self, **overrides) -> ViLConfig:
        return ViLConfig.from_dict({**self.config, **overrides})

    def architecture(self) -> dict:
        """The facts listings show: generation, width, depth, patch and stride."""
        config = self.make_config()
        return dict(
            version=config.version, dim=config.dim, depth=config.depth,
            patch=config.patch_size[0], stride=config.patch_stride[0],
        )  # fmt: skip

    def checkpoint(self, tag: str | None = None) -> Checkpoint:
        """The released checkpoint with this tag; the first one (the default) for None."""
        if not self.checkpoints:
            raise ValueError(f"model {self.name!r} has no released checkpoint")
        if tag is None:
            return self.checkpoints[0]
        for checkpoint in self.checkpoints:
            if checkpoint.tag == tag:
                return checkpoint
        tags = [c.tag for c in self.checkpoints]
        raise ValueError(f"model {self.name!r} has no checkpoint tagged {tag!r}; its tags: {tags}")


def _v2(size: str, dim: int, checkpoints) -> Variant:
    return Variant(
        name=f"vil2_{size}_patch16_224",
        description=f"ViL-{size[0].upper()} (VisionLSTM2), dim {dim}, 24 mLSTM blocks",
        config=dict(version=2, dim=dim, depth=24),
        checkpoints=tuple(checkpoints),
    )


def _v1(size: str, label: str, dim: int, depth: int, stride: int | None, checkpoints) -> Variant:
    suffix = "_stride8" if stride else ""
    return Variant(
        name=f"vil1_{size}_patch16{suffix}_224",
        description=f"ViL-{label} (VisionLSTM v1), dim {dim}, {depth} mLSTM blocks"
        + (", patch stride 8 (729 tokens at 224)" if stride else ""),
        config=dict(version=1, dim=dim, depth=depth, patch_stride=stride),
        checkpoints=tuple(checkpoints),
    )


def split_name(name: str) -> tuple[str, str | None]:
    """ "vil2_tiny_patch16_224.in1k_e400" -> ("vil2_tiny_patch16_224", "in1k_e400"); no tag -> (name, None)."""
    variant, _, tag = name.partition(".")
    return variant, tag or None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _v2("tiny", 192, [
            Checkpoint("in1k", "vil2_tiny16_e800_in1k.th", 78.3, "vil2-tiny"),
            Checkpoint("in1k_e400", "vil2_tiny16_e400_in1k.th", 77.2, "vil2-tiny-e400"),
        ]),
        _v2("small", 384, [Checkpoint("in1k", "vil2_small16_e400_in1k.th", 81.5, "vil2-small")]),
        _v2("base", 768, [Checkpoint("in1k", "vil2_base16_e400_in1k.th", 82.4, "vil2-base")]),
        _v1("tiny", "T", 192, 24, None, [
            Checkpoint("in1k", "vil_tiny16_e800_in1k.th", 77.3, "vil-tiny"),
            Checkpoint("in1k_e400", "vil_tiny16_e400_in1k.th", 76.1, "vil-tiny-e400"),
        ]),
        _v1("tinyplus", "T+", 192, 29, None, [
            Checkpoint("in1k", "vil_tinyplus16_e800_in1k.th", 78.1, "vil-tinyplus"),
            Checkpoint("in1k_e400", "vil_tinyplus16_e400_in1k.th", 77.2, "vil-tinyplus-e400"),
        ]),
        _v1("small", "S", 384, 24, None, [Checkpoint("in1k", "vil_small16_e400_in1k.th", 80.7, "vil-small")]),
        _v1("smallplus", "S+", 384, 26, None, [
            Checkpoint("in1k", "vil_smallplus16_e400_in1k.th", 80.9, "vil-smallplus"),
        ]),
        _v1("base", "B", 768, 24, None, [Checkpoint("in1k", "vil_base16_e400_in1k.th", 81.6, "vil-base")]),
        _v1("tinyplus", "T+", 192, 29, 8, [
            # the official hubconf points this entry at the stride-16 file; we keep its address as published
            Checkpoint("in1k", "vil_tinyplus16_e800_in1k.th", 80.0, "vil-tinyplus-stride8"),
        ]),
        _v1("smallplus", "S+", 384, 26, 8, [
            Checkpoint("in1k", "vil_smallplus16_e400_in1k_stride8.th", 82.2, "vil-smallplus-stride8"),
        ]),
        _v1("base", "B", 768, 24, 8, [
            Checkpoint("in1k", "vil_base16_e400_in1k_stride8.th", 82.7, "vil-base-stride8"),
        ]),
    )
}  # fmt: skip


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

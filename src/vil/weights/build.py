"""Build a model from stored weights (any format, once in our names), with the overrides a user may ask for.

One place for what every loader does: fit the position embedding to the requested image size, drop a head whose
number of classes changes, check the architecture against a named variant, and load strictly with an error that
lists what does not fit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from ..layers.embed import resample_pos_embed
from ..models.config import ViLConfig
from ..models.vision_lstm import VisionLSTM
from .convert import describe_architecture
from .errors import CheckpointError

logger = logging.getLogger(__name__)

# Config fields a user may change when loading weights: none of them changes the shape of a stored tensor except
# img_size (the position embedding is resampled) and num_classes (the head is replaced); the others are checked
# against the tensors by the strict load (block_design: number of branches; pooling: the pooled width).
LOAD_OVERRIDES = (
    "img_size",
    "num_classes",
    "mlstm_backend",
    "chunk_size",
    "drop_path_rate",
    "patch_stride",
    "block_design",
    "pooling",
)
# Fields that fix the shapes of the stored tensors: a named variant and a file must agree on them.
SHAPE_FIELDS = (
    "version",
    "dim",
    "depth",
    "patch_size",
    "in_chans",
    "expansion",
    "num_heads",
    "qkv_block_size",
    "conv_kind",
    "conv_kernel_size",
    "bias",
)
# What a named variant decides even though the file may record something else (no tensor depends on them).
VARIANT_FIELDS = ("patch_stride", "block_design", "pooling")


def model_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: ViLConfig, source: str, **overrides
) -> VisionLSTM:
    """A VisionLSTM of ``config`` (with ``overrides``, see LOAD_OVERRIDES) holding the weights of ``state_dict``.

    ``state_dict`` is in our names; ``source`` names it in messages. A changed ``img_size`` resamples the position
    embedding (bicubic); a changed ``num_classes`` drops the stored head for a freshly initialised one.
    """
    not_allowed = sorted(set(overrides) - set(LOAD_OVERRIDES))
    if not_allowed:
        raise ValueError(
            f"cannot override {not_allowed} when loading weights from {source}: they change the shapes of the stored "
            f"tensors; allowed overrides: {list(LOAD_OVERRIDES)}"
        )
    target = config.replace(**overrides) if overrides else config
    state_dict = fit_pos_embed(dict(state_dict), target.pos_embed_grid)
    if "fc_norm.weight" not in state_dict and "head.weight" not in state_dict:
        # a feature extractor's checkpoint (no head): nothing was trained on top of this LayerNorm
        logger.info("%s has no LayerNorm after pooling (a feature extractor): fc_norm is freshly initialised", source)
        fresh = {"fc_norm.weight", "fc_norm.bias"}
    else:
        fresh = set()
    fresh |= _fit_head(state_dict, target.num_classes, source)
    model = VisionLSTM(target)
    load_strict(model, state_dict, source, fresh)
    return model


def fit_pos_embed(state_dict: dict[str, torch.Tensor], grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Resample the stored position embedding (1, h, w, D) to ``grid`` (bicubic, as the official code)."""
    stored = state_dict.get("pos_embed.embed")
    if stored is None or stored.ndim != 4 or tuple(stored.shape[1:3]) == tuple(grid):
        return state_dict
    logger.info("position embedding resampled from %s to %s tokens", tuple(stored.shape[1:3]), tuple(grid))
    # bicubic interpolation needs a floating type that the CPU supports: compute in float32, store as before
    state_dict["pos_embed.embed"] = resample_pos_embed(stored.float(), tuple(grid)).to(stored.dtype)
    return state_dict


def _fit_head(state_dict: dict[str, torch.Tensor], num_classes: int, source: str) -> set[str]:
    """Drop the stored head if it has another number of classes; returns the keys that stay freshly initialised."""
    stored = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0
    if stored == num_classes:
        return set()
    state_dict.pop("head.weight", None)
    state_dict.pop("head.bias", None)
    if num_classes == 0:
        logger.info(
            "%s: the head for %d classes is dropped (num_classes=0: the model returns features)", source, stored
        )
        return set()
    logger.info(
        "%s: the head for %d classes is replaced by a freshly initialised head for %d classes (train it)",
        source,
        stored,
        num_classes,
    )
    return {"head.weight", "head.bias"}


def load_strict(model: VisionLSTM, state_dict: Mapping[str, torch.Tensor], source: str, fresh=frozenset()) -> None:
    """Load every tensor of the model from ``state_dict`` (except the ``fresh`` keys), or raise CheckpointError
    listing the missing keys, the unexpected keys and the shape mismatches.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict and key not in fresh]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: stored {tuple(value.shape)}, model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label} ({len(items)}): {_listing(items)}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise CheckpointError(
            f"{source} does not fit the model ({describe_architecture(model.config)}): " + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=False)  # complete but for the fresh keys, as checked above


def adopt_variant(stored: ViLConfig, variant: ViLConfig, source: str, variant_name: str) -> ViLConfig:
    """The config to load ``source`` as the named variant: the shapes must agree; the variant's patch stride, block
    design and pooling apply (the official hub does the same: its stride-8 ViL-T+ loads the stride-16 file).
    """
    differences = [
        f"{name}: file {getattr(stored, name)!r}, {variant_name} {getattr(variant, name)!r}"
        for name in SHAPE_FIELDS
        if getattr(stored, name) != getattr(variant, name)
    ]
    if differences:
        raise CheckpointError(f"{source} is not a {variant_name}: " + "; ".join(differences))
    changes = {
        name: getattr(variant, name) for name in VARIANT_FIELDS if getattr(stored, name) != getattr(variant, name)
    }
    if changes:
        logger.info("%s loaded as %s with %s", source, variant_name, changes)
    return stored.replace(**changes)


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")

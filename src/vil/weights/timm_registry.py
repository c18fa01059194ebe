"""Every named ViL variant in timm's model registry (done on ``import vil``), so that
``timm.create_model("vil2_tiny_patch16_224", num_classes=10)`` builds it and ``pretrained=True`` loads the released
weights (timm downloads them; the filter below converts the official names to ours).
"""

from __future__ import annotations

import logging
from functools import partial

import timm.models
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..models.variants import VARIANTS
from ..models.vision_lstm import VisionLSTM
from .build import fit_pos_embed
from .convert import split_checkpoint, to_vil_names

logger = logging.getLogger(__name__)

# Marks our entry points, so that registering again (a re-import) is recognised and skipped.
_VARIANT_ATTRIBUTE = "_vil_variant"


def _pretrained_cfg(checkpoint) -> dict:
    # the official evaluation: resize to 224 (bicubic), center crop 224, ImageNet mean/std
    return dict(
        url=checkpoint.url,
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=None,
        crop_pct=1.0,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.proj",
        classifier="head",
        paper_ids="arXiv:2406.04303",
        paper_name="Vision-LSTM: xLSTM as Generic Vision Backbone",
        origin_url="https://github.com/NX-AI/vision-lstm",
    )


# timm's register_model reads the pretrained configs of an entry point from its module's ``default_cfgs``
default_cfgs = generate_default_cfgs(
    {
        f"{variant.name}.{checkpoint.tag}": _pretrained_cfg(checkpoint)
        for variant in VARIANTS.values()
        for checkpoint in variant.checkpoints
    }
)


def filter_state_dict(state_dict, model: VisionLSTM) -> dict:
    """timm's pretrained filter: official names (or ours) -> ours, position embedding fitted to the model's grid."""
    tensors, _ = split_checkpoint(state_dict, source="pretrained weights")
    ours, _ = to_vil_names(tensors, source="pretrained weights")
    return fit_pos_embed(ours, model.config.pos_embed_grid)


def _build(variant_name: str, **overrides) -> VisionLSTM:
    model = VisionLSTM(VARIANTS[variant_name].make_config(**overrides))
    # what timm's feature extraction (features_only=True) reads: one feature map per mLSTM block
    reduction = model.config.patch_stride[0]
    model.feature_info = [
        dict(module=f"blocks.{index}", num_chs=model.config.dim, reduction=reduction)
        for index in range(model.config.depth)
    ]
    return model


def _entry_point(variant_name: str):
    def entry_point(pretrained: bool = False, **kwargs) -> VisionLSTM:
        try:
            return build_model_with_cfg(
                partial(_build, variant_name),
                variant_name,
                pretrained,
                pretrained_filter_fn=filter_state_dict,
                feature_cfg=dict(feature_cls="getter", out_indices=3),  # features_only through forward_intermediates
                **kwargs,
            )
        except OSError as error:  # timm's download failed (no network, HTTP error): say how to use a local file
            if not pretrained or isinstance(error, FileNotFoundError):
                raise
            from .pretrained import download_failure  # imported here: it imports the conversion code

            cfg = kwargs.get("pretrained_cfg")  # timm passes the tag of "name.tag" as a string
            tag = cfg if isinstance(cfg, str) else None
            raise download_failure(variant_name, VARIANTS[variant_name].checkpoint(tag), error) from error

    entry_point.__name__ = entry_point.__qualname__ = variant_name
    entry_point.__module__ = __name__
    entry_point.__doc__ = VARIANTS[variant_name].description
    setattr(entry_point, _VARIANT_ATTRIBUTE, variant_name)
    return entry_point


def register_timm_models() -> list[str]:
    """Register every variant with timm; returns the names registered now. A name timm already knows is left alone:
    ours from an earlier registration silently, another model's with a warning.
    """
    registered = []
    for name in VARIANTS:
        if timm.models.is_model(name):
            existing = timm.models.model_entrypoint(name)
            if getattr(existing, _VARIANT_ATTRIBUTE, None) != name:
                logger.warning("timm already has a model %r (%s); vil does not replace it", name, existing.__module__)
            continue
        register_model(_entry_point(name))
        registered.append(name)
    return registered

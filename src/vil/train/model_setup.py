"""The model a run trains: built from a variant name and overrides, or initialised from pretrained weights and
adapted to the run (fine-tuning: new image size with the position embedding resampled, new classes with a fresh
head, new patch stride).
"""

from __future__ import annotations

from ..models.config import ViLConfig
from ..models.variants import resolve_config
from ..models.vision_lstm import VisionLSTM
from ..weights.build import model_from_state_dict
from .config import TrainConfig

# Config fields a fine-tuning run may change relative to its initial weights; all others define the architecture.
ADAPTABLE_FIELDS = ("img_size", "num_classes", "patch_stride", "drop_path_rate", "mlstm_backend", "chunk_size")


def architecture_differences(a: ViLConfig, b: ViLConfig) -> dict[str, tuple]:
    """The architecture fields where two configs differ: {field: (a's value, b's value)}."""
    return a.differences(b, ignore=ADAPTABLE_FIELDS)


def run_model_config(config: TrainConfig, num_classes: int, in_chans: int, init: ViLConfig | None = None) -> ViLConfig:
    """The ViLConfig of a run: the named variant (or the init weights' architecture, or the defaults), with the run's
    image size, the data's classes and channels, and ``model_args`` on top.
    """
    changes = dict(img_size=config.img_size, num_classes=num_classes, in_chans=in_chans, **config.model_args)
    if init is None:
        return resolve_config(config.model, **changes) if config.model else ViLConfig.from_dict(changes)
    if config.model is not None:
        mismatch = architecture_differences(resolve_config(config.model, in_chans=init.in_chans), init)
        if mismatch:
            raise ValueError(f"the init weights are not the architecture of {config.model!r}: {_describe(mismatch)}")
    target = init.replace(**changes)
    mismatch = architecture_differences(init, target)
    if mismatch:
        raise ValueError(
            f"the run changes the architecture of the init weights: {_describe(mismatch)}; fine-tuning may change "
            f"only {', '.join(ADAPTABLE_FIELDS)} (model_args {config.model_args} and the data's channels apply on "
            "top of the init weights; --set 'model_args={}' keeps their architecture)"
        )
    return target


def adapt_pretrained(source: VisionLSTM, target: ViLConfig, name: str = "the init weights") -> VisionLSTM:
    """A model with ``target``'s config carrying ``source``'s weights: the position embedding resampled (bicubic) to
    the new grid, a freshly initialised head when the number of classes changes. The architecture must match.
    """
    mismatch = architecture_differences(source.config, target)
    if mismatch:
        raise ValueError(f"cannot load weights of another architecture: {_describe(mismatch)}")
    changes = {k: getattr(target, k) for k in ADAPTABLE_FIELDS if getattr(target, k) != getattr(source.config, k)}
    return model_from_state_dict(source.state_dict(), source.config, name, **changes)


def _describe(mismatch: dict[str, tuple]) -> str:
    return "; ".join(f"{name}: {a!r} vs {b!r}" for name, (a, b) in mismatch.items())

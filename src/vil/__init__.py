"""Vision-LSTM (ViL): xLSTM's mLSTM as a generic vision backbone."""

from . import ops
from .models import VARIANTS, ViLConfig, VisionLSTM, create_model, list_models
from .weights import CheckpointError, WeightsDownloadError, load_official, load_pretrained, read_config, save_pretrained
from .weights.timm_registry import register_timm_models

__version__ = "0.1.0"

register_timm_models()  # timm.create_model("vil2_tiny_patch16_224") works once vil is imported

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "ViLConfig",
    "VisionLSTM",
    "WeightsDownloadError",
    "create_model",
    "list_models",
    "load_official",
    "load_pretrained",
    "ops",
    "read_config",
    "save_pretrained",
]

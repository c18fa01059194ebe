"""Vision-LSTM (ViL): xLSTM's mLSTM as a generic vision backbone."""

from . import ops
from .models import VARIANTS, ViLConfig, VisionLSTM, create_model, list_models

__version__ = "0.1.0"

__all__ = ["VARIANTS", "ViLConfig", "VisionLSTM", "create_model", "list_models", "ops"]

from .config import ViLConfig
from .factory import create_model
from .variants import VARIANTS, list_models
from .vision_lstm import VisionLSTM

__all__ = ["VARIANTS", "ViLConfig", "VisionLSTM", "create_model", "list_models"]

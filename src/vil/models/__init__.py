from .config import ViLConfig
from .factory import create_model, list_models
from .variants import VARIANTS
from .vision_lstm import VisionLSTM

__all__ = ["VARIANTS", "ViLConfig", "VisionLSTM", "create_model", "list_models"]

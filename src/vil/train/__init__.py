"""Training: recipes, the settings of a run, and the loop (``train(get_recipe("digits"), "runs/x")``)."""

from .config import TrainConfig
from .recipes import RECIPES, get_recipe
from .trainer import train

__all__ = ["RECIPES", "TrainConfig", "get_recipe", "train"]

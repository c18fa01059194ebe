"""Data: the embedded digits, image folders, and the preprocessing saved with trained models."""

from .preprocessing import Preprocessing, eval_transform, train_transform
from .sources import build_data_splits, build_eval_dataset

__all__ = ["Preprocessing", "build_data_splits", "build_eval_dataset", "eval_transform", "train_transform"]

"""Semantic segmentation: ViL (or a timm ViT) + simple feature pyramid + UperNet, as the official ViL on ADE20K."""

from .config import SegmenterConfig
from .segmenter import Segmenter, create_segmenter

__all__ = ["Segmenter", "SegmenterConfig", "create_segmenter"]

"""Our weight format: a safetensors file whose metadata carries the model's ViLConfig as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .io_utils import atomic_write
from .models.config import ViLConfig
from .models.vision_lstm import VisionLSTM

FORMAT = "vil"
CONFIG_KEY = "vil_config"


def save_pretrained(model: VisionLSTM, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's weights and config to ``path`` (safetensors), atomically."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    meta = {"format": FORMAT, CONFIG_KEY: json.dumps(model.config.to_dict()), **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_config(path: str | os.PathLike) -> ViLConfig:
    """The ViLConfig stored in a file written by :func:`save_pretrained`."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if CONFIG_KEY not in meta:
        raise ValueError(f"{path} is a safetensors file without a ViL config in its metadata (not saved by vil)")
    return ViLConfig.from_dict(json.loads(meta[CONFIG_KEY]))


def load_pretrained(path: str | os.PathLike) -> VisionLSTM:
    """Rebuild the model saved by :func:`save_pretrained`, weights included."""
    model = VisionLSTM(read_config(path))
    model.load_state_dict(load_file(str(path)))
    return model

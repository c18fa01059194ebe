"""Our weight format: a safetensors file whose metadata carries the model's ViLConfig as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..io_utils import atomic_write
from ..models.config import ViLConfig
from ..models.vision_lstm import VisionLSTM
from .build import model_from_state_dict
from .errors import CheckpointError
from .files import read_safetensors, read_safetensors_metadata

FORMAT = "vil"
CONFIG_KEY = "vil_config"


def save_pretrained(model: VisionLSTM, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's weights and config to ``path`` (safetensors), atomically."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    meta = {"format": FORMAT, CONFIG_KEY: json.dumps(model.config.to_dict()), **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_config(path: str | os.PathLike) -> ViLConfig:
    """The ViLConfig stored in a file written by :func:`save_pretrained`."""
    return config_from_metadata(path, read_safetensors_metadata(path))


def read_pretrained(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ViLConfig]:
    """The tensors and the config of a file written by :func:`save_pretrained`."""
    tensors, metadata = read_safetensors(path)
    return tensors, config_from_metadata(path, metadata)


def load_pretrained(path: str | os.PathLike, **overrides) -> VisionLSTM:
    """Rebuild the model saved by :func:`save_pretrained`, weights included.

    Overrides as for :func:`vil.load_official`: ``img_size`` (position embedding resampled), ``num_classes`` (new
    head), ``mlstm_backend``, ``chunk_size``, ... (see ``vil.weights.build.LOAD_OVERRIDES``).
    """
    state_dict, config = read_pretrained(path)
    return model_from_state_dict(state_dict, config, str(path), **overrides)


def config_from_metadata(path, metadata: dict[str, str]) -> ViLConfig:
    """The ViLConfig in the metadata of a file written by :func:`save_pretrained`."""
    if CONFIG_KEY not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file without a ViL config in its metadata (not written by vil.save_pretrained)"
        )
    try:
        values = json.loads(metadata[CONFIG_KEY])
        return ViLConfig.from_dict(values)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: the ViL config in its metadata is not valid: {error}") from error

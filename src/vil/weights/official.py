"""Loading the official Vision-LSTM checkpoints (the authors' released files, or state dicts of their modules)."""

from __future__ import annotations

import logging
import os

from ..models.vision_lstm import VisionLSTM
from .build import model_from_state_dict
from .convert import ConvertedCheckpoint, convert_checkpoint
from .files import read_torch_checkpoint

logger = logging.getLogger(__name__)


def read_official(path: str | os.PathLike) -> ConvertedCheckpoint:
    """An official checkpoint file (read with ``weights_only=True``) in our names, with its inferred architecture."""
    return convert_checkpoint(read_torch_checkpoint(path), source=str(path))


def load_official(path: str | os.PathLike, **overrides) -> VisionLSTM:
    """A VisionLSTM with the weights of an official checkpoint; its outputs equal the official model's.

    ``path``: a released file (``torch.save`` dict with ``state_dict`` in the training code's names and
    ``ctor_kwargs``) or a plain state dict of the official ``VisionLSTM`` / ``VisionLSTM2`` modules. The architecture
    is inferred from the tensors and ``ctor_kwargs``. Overrides: ``img_size`` (position embedding resampled, bicubic),
    ``num_classes`` (a new head), ``mlstm_backend`` / ``chunk_size``, ``drop_path_rate``, and what a plain state dict
    cannot show: ``patch_stride`` (e.g. 8 for the long-sequence models) and ``block_design``.
    """
    return model_from_converted(read_official(path), str(path), **overrides)


def model_from_converted(converted: ConvertedCheckpoint, source: str, **overrides) -> VisionLSTM:
    """The model of a converted checkpoint; says (in the log) what had to be assumed and was not overridden."""
    for name, reason in converted.assumptions.items():
        if name not in overrides:
            logger.info("%s: %s (pass %s=... to choose)", source, reason, name)
    return model_from_state_dict(converted.state_dict, converted.config, source, **overrides)

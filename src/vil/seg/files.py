"""A trained segmenter on disk: one safetensors file with the weights and, as metadata, the SegmenterConfig, the
class names, the normalisation and the training data's name. ``load_segmenter`` also reads a run directory (its
final weights, else its latest training checkpoint) and a training checkpoint itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..io_utils import atomic_write
from ..weights.errors import CheckpointError
from ..weights.files import SAFETENSORS, detect_format, read_safetensors, read_torch_checkpoint
from .config import SegmenterConfig
from .segmenter import Segmenter

FORMAT = "vil-segmenter"
MODEL_FINAL = "model_final.safetensors"
CHECKPOINT = "checkpoint_latest.pt"
KEYS = ("config", "classes", "mean", "std", "dataset", "inference")


@dataclass
class SavedSegmenter:
    model: Segmenter
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: Path
    dataset: str | None = None
    inference: dict | None = None  # how it was validated: scale (long, short), mode, crop_size, stride


def save_segmenter(
    path: str | os.PathLike, model: Segmenter, classes, mean, std, dataset: str | None, inference: dict
) -> Path:
    """Write the segmenter's weights and what predicting needs (atomically)."""
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a segmenter with {model.num_classes} classes")
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    meta = dict(
        format=FORMAT,
        config=json.dumps(model.config.to_dict()),
        classes=json.dumps(list(classes)),
        mean=json.dumps(list(mean)),
        std=json.dumps(list(std)),
        dataset=json.dumps(dataset),
        inference=json.dumps(inference),
    )
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_segmenter(path: str | os.PathLike) -> SavedSegmenter:
    """A segmenter from a file written by :func:`save_segmenter`, a ``vil seg train`` run directory, or its
    training checkpoint."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (MODEL_FINAL, CHECKPOINT):
            if (path / name).is_file():
                return load_segmenter(path / name)
        raise FileNotFoundError(f"{path} holds no {MODEL_FINAL} or {CHECKPOINT}: is it a `vil seg train` run?")
    if not path.is_file():
        raise FileNotFoundError(f"no segmenter file or run directory at {path}")
    if detect_format(path) == SAFETENSORS:
        tensors, meta = read_safetensors(path)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a segmenter written by vil (no format={FORMAT!r} record)")
        values = {key: json.loads(meta[key]) for key in KEYS}
    else:
        payload = read_torch_checkpoint(path)
        if not isinstance(payload, dict) or "segmenter_config" not in payload:
            raise CheckpointError(f"{path} is not a `vil seg train` checkpoint")
        tensors = payload["model"]
        values = {key: payload[key] for key in KEYS if key != "config"}
        values["config"] = payload["segmenter_config"]
    model = Segmenter(SegmenterConfig.from_dict(values["config"]))
    _load_state(model, tensors, path)
    return SavedSegmenter(
        model.eval(),
        values["classes"],
        tuple(values["mean"]),
        tuple(values["std"]),
        path,
        values["dataset"],
        values["inference"],
    )


def _load_state(model: Segmenter, tensors: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit its segmenter config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )

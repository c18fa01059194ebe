"""A trained classifier on disk: weights, class names and preprocessing, as ``vil eval`` and ``vil predict`` need.

Our files are the weight format of :mod:`vil.weights.vil_format` (safetensors with the ViLConfig) plus two metadata
records: ``vil_classes`` (the class names, in label order) and ``vil_preprocessing`` (see
:class:`vil.data.preprocessing.Preprocessing`). :func:`load_classifier` also reads a run directory, a training
checkpoint, and official checkpoints (``.th``, converted as by ``vil.load_official``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..data.preprocessing import Preprocessing
from ..models.config import ViLConfig
from ..models.variants import VARIANTS, split_name
from ..models.vision_lstm import VisionLSTM
from .build import load_strict, model_from_state_dict
from .convert import convert_checkpoint
from .files import SAFETENSORS, detect_format, read_safetensors, read_torch_checkpoint
from .official import model_from_converted
from .vil_format import config_from_metadata, save_pretrained

logger = logging.getLogger(__name__)

CLASSES_KEY = "vil_classes"
PREPROCESSING_KEY = "vil_preprocessing"
DATASET_KEY = "vil_dataset"
# Which file of a run directory stands for the run, in order of preference: the weights selected on validation
# (the ones the run's test accuracy is of), then the last ones.
RUN_MODEL_FILES = ("model_best.safetensors", "model_final.safetensors")


@dataclass
class Classifier:
    model: VisionLSTM
    classes: list[str] | None  # label names in output order (for official checkpoints: ImageNet synset ids)
    preprocessing: Preprocessing
    source: Path  # the file the weights came from
    dataset: str | None = None  # what it was trained on ("digits" or a data directory), if known
    descriptions: list[str] | None = None  # human-readable class names where they differ from ``classes``

    def class_name(self, index: int) -> str:
        if self.descriptions is not None:
            return self.descriptions[index]
        return self.classes[index] if self.classes is not None else f"class {index}"


def save_classifier(
    path: str | Path,
    model: VisionLSTM,
    classes: list[str],
    preprocessing: Preprocessing,
    dataset: str | None = None,
) -> Path:
    """Write weights, config, class names and preprocessing to one safetensors file (atomically)."""
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    metadata = {
        CLASSES_KEY: json.dumps(list(classes)),
        PREPROCESSING_KEY: json.dumps(preprocessing.to_dict()),
        DATASET_KEY: json.dumps(dataset),
    }
    return save_pretrained(model, path, metadata=metadata)


def load_classifier(path: str | Path) -> Classifier:
    """A classifier from a run directory, one of our ``.safetensors`` files, a training checkpoint (``.pt``), an
    official checkpoint (anything else, e.g. ``.th``), or a variant name with released weights (downloaded).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return load_classifier(_run_model_file(path))
    if not path.exists():
        if split_name(str(path))[0] in VARIANTS:
            return _from_released(str(path))
        raise FileNotFoundError(
            f"no model file or run directory at {path}, nor a model name with released weights (vil checkpoints)"
        )
    if detect_format(path) == SAFETENSORS:
        return _load_safetensors(path)
    from ..train.state import FORMAT

    payload = read_torch_checkpoint(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _from_training_checkpoint(path, payload)
    return _from_official_checkpoint(path, payload)


def _run_model_file(run_dir: Path) -> Path:
    for name in RUN_MODEL_FILES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise FileNotFoundError(
        f"{run_dir} holds no model file ({' or '.join(RUN_MODEL_FILES)}); is it a vil run directory?"
    )


def _load_safetensors(path: Path) -> Classifier:
    tensors, meta = read_safetensors(path)
    model = model_from_state_dict(tensors, config_from_metadata(path, meta), str(path))
    classes = json.loads(meta[CLASSES_KEY]) if CLASSES_KEY in meta else None
    if PREPROCESSING_KEY in meta:
        pre = Preprocessing.from_dict(json.loads(meta[PREPROCESSING_KEY]))
    else:
        pre = default_preprocessing(model.config)
    dataset = json.loads(meta[DATASET_KEY]) if DATASET_KEY in meta else None
    return Classifier(model, classes, pre, path, dataset)


def _from_training_checkpoint(path: Path, payload: dict) -> Classifier:
    model = VisionLSTM(ViLConfig.from_dict(payload["model_config"]))
    load_strict(model, payload["model"], str(path))
    pre = Preprocessing.from_dict(payload["preprocessing"])
    return Classifier(model, payload["classes"], pre, path, payload.get("dataset"))


def _from_released(name: str) -> Classifier:
    """The released ImageNet-1K weights of a variant name ("vil2_tiny_patch16_224", or "name.tag"), downloaded
    through torch.hub's cache as ``create_model(name, pretrained=True)`` does.
    """
    from ..models.variants import resolve_variant
    from .pretrained import cache_dir, download_official

    variant, tag = resolve_variant(name)
    checkpoint = variant.checkpoint(tag)
    return _from_official_checkpoint(cache_dir() / checkpoint.file, download_official(variant.name, checkpoint))


def _from_official_checkpoint(path: Path, payload) -> Classifier:
    model = model_from_converted(convert_checkpoint(payload, source=str(path)), str(path))
    classes = descriptions = None
    if model.num_classes == 1000:  # an ImageNet-1K head: label the outputs with the ImageNet classes
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        classes = [info.index_to_label_name(i) for i in range(1000)]
        descriptions = [info.index_to_description(i) for i in range(1000)]
    return Classifier(model, classes, default_preprocessing(model.config), path, None, descriptions)


def default_preprocessing(config: ViLConfig) -> Preprocessing:
    """ImageNet preprocessing at the model's size, for weights saved without a preprocessing record."""
    height, width = config.img_size
    if config.in_chans != 3 or height != width:
        raise ValueError(
            f"weights without a preprocessing record for a model taking {config.in_chans}-channel {height} x {width} "
            "images: no default (ImageNet preprocessing needs 3 channels and a square size)"
        )
    return Preprocessing(img_size=height, in_chans=3)

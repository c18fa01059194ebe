"""``create_model(..., pretrained=...)``: released weights downloaded through torch.hub, or a local file of either
format, loaded as the requested variant.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from ..models.config import ViLConfig
from ..models.variants import Checkpoint, resolve_config, resolve_variant
from ..models.vision_lstm import VisionLSTM
from .build import LOAD_OVERRIDES, adopt_variant, model_from_state_dict
from .convert import convert_checkpoint
from .errors import CheckpointError, WeightsDownloadError
from .files import SAFETENSORS, detect_format, read_torch_checkpoint
from .vil_format import read_pretrained


def load_pretrained_model(name_or_config: str | ViLConfig, pretrained, **overrides) -> VisionLSTM:
    """The model ``name_or_config`` with weights from ``pretrained`` (True: the released default checkpoint of the
    variant, or the one named by a ``"name.tag"``; otherwise a file path), then ``overrides``.

    The file must hold the architecture's tensors; the architecture's patch stride, block design and pooling apply.
    With a name, image size and classes are the file's unless overridden; a ViLConfig decides them itself.
    """
    variant_config = resolve_config(name_or_config)
    if isinstance(name_or_config, ViLConfig):
        # every field of a given config is the caller's choice: its image size, classes, backend apply as well
        variant_name = "the given config"
        overrides = {**{name: getattr(name_or_config, name) for name in LOAD_OVERRIDES}, **overrides}
    else:
        variant_name = name_or_config
    if pretrained is True:
        if not isinstance(name_or_config, str):
            raise ValueError("pretrained=True needs a model name; with a ViLConfig, pass pretrained='path/to/file'")
        variant, tag = resolve_variant(name_or_config)
        checkpoint = variant.checkpoint(tag)
        source = checkpoint.url
        converted = convert_checkpoint(download_official(variant.name, checkpoint), source)
        state_dict, stored_config = converted.state_dict, converted.config
    elif isinstance(pretrained, str | os.PathLike):
        source = str(pretrained)
        state_dict, stored_config = read_weights_file(pretrained)
    else:
        raise ValueError(f"pretrained must be True, False or a file path, got {pretrained!r}")
    config = adopt_variant(stored_config, variant_config, source, variant_name)
    return model_from_state_dict(state_dict, config, source, **overrides)


def read_weights_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ViLConfig]:
    """Tensors in our names and the stored architecture of our safetensors file or an official checkpoint."""
    if detect_format(path) == SAFETENSORS:
        return read_pretrained(path)
    converted = convert_checkpoint(read_torch_checkpoint(path), source=str(path))
    return converted.state_dict, converted.config


def download_official(variant_name: str, checkpoint: Checkpoint):
    """The released file of ``checkpoint`` through torch.hub's download cache (``weights_only=True``)."""
    try:
        return torch.hub.load_state_dict_from_url(checkpoint.url, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{checkpoint.url} (cached under {cache_dir()}) cannot be loaded: {error}") from error
    except OSError as error:  # no network, DNS failure, HTTP error, timeout
        raise download_failure(variant_name, checkpoint, error) from error
    except (RuntimeError, EOFError) as error:
        raise CheckpointError(
            f"the downloaded file of {checkpoint.url} is truncated or corrupt ({error}); delete it from "
            f"{cache_dir()} and try again"
        ) from error


def download_failure(variant_name: str, checkpoint: Checkpoint, error: OSError) -> WeightsDownloadError:
    """The error for a failed download of ``checkpoint``: what failed, and how to use a local copy of the file
    (shared by ``vil.create_model`` and ``timm.create_model``).
    """
    local = f"path/to/{checkpoint.file}"
    return WeightsDownloadError(
        f"could not download the released weights of {variant_name} ({checkpoint.tag}) from {checkpoint.url}: "
        f"{error}.\nDownload the file where the network allows and pass it as a local file:\n"
        f'    vil.create_model("{variant_name}", pretrained="{local}")\n'
        f'    vil.load_official("{local}")\n'
        f'    timm.create_model("{variant_name}", pretrained=True, pretrained_cfg_overlay=dict(file="{local}"))\n'
        f"or put it into torch.hub's cache ({cache_dir()}), where pretrained=True finds it."
    )


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"

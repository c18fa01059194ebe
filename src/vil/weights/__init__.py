"""Stored weights: reading files, the official checkpoints, our safetensors format, and models built from them.

The modules, each importing only those listed above it (and never vil.models.factory, which asks this package for
weights):

- ``errors``: CheckpointError and WeightsDownloadError.
- ``files``: which format a file is (torch.save or safetensors) and reading it safely (``weights_only=True``).
- ``convert``: official checkpoints in our names, with the architecture inferred from the tensors.
- ``build``: a model from a state dict in our names: allowed overrides, position embedding and head fitted,
  checked against a named variant, loaded strictly.
- ``vil_format``: our safetensors files with the ViLConfig in their metadata (save_pretrained, load_pretrained).
- ``official``: load_official, the official checkpoint files as models.
- ``pretrained``: ``create_model(..., pretrained=...)``: the released files downloaded through torch.hub, or a local
  file of either format, loaded as a named variant.
- ``classifier``: a trained classifier on disk (weights, class names, preprocessing) for ``vil eval`` / ``predict``.
- ``timm_registry``: the variants in timm's model registry, with the released weights converted on load.

The release catalogue itself (each variant's checkpoints and their addresses) is part of the variant table,
:mod:`vil.models.variants`.
"""

from .errors import CheckpointError, WeightsDownloadError
from .official import load_official
from .vil_format import load_pretrained, read_config, save_pretrained

__all__ = [
    "CheckpointError",
    "WeightsDownloadError",
    "load_official",
    "load_pretrained",
    "read_config",
    "save_pretrained",
]

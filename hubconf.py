"""torch.hub entry points: one per named ViL variant, generated from the variant table (vil.models.variants).

    model = torch.hub.load("<this repo>", "vil2_tiny_patch16_224", pretrained=True)  # released ImageNet-1K weights
    model = torch.hub.load("<this repo>", "vil1_tiny_patch16_224", num_classes=10, img_size=384)

Every entry point takes ``pretrained=False`` (True, or a local file path) and ``create_model``'s overrides.
"""

import os as _os
import sys as _sys

# torch.hub imports this file from a downloaded copy of the repository: make its package importable without install
_SRC = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src")
if _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)

from vil import create_model as _create_model  # noqa: E402
from vil.models.variants import VARIANTS as _VARIANTS  # noqa: E402

dependencies = ["torch", "timm", "safetensors"]


def _entry_point(name):
    def entry_point(pretrained=False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__doc__ = (
        f"{_VARIANTS[name].description}.\n\npretrained: False, True (download the released weights) or a file path; "
        "kwargs: overrides of vil.create_model (img_size, num_classes, ...)."
    )
    return entry_point


globals().update({_name: _entry_point(_name) for _name in _VARIANTS})

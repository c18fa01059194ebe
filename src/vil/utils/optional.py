"""Optional dependencies (``pip install 'vil[plots]'``): matplotlib for the figures, tensorboard for TensorBoard
logs. Training, evaluation and benchmarks work without them; what needs one says so in one line.
"""

from __future__ import annotations

import importlib
import importlib.util

EXTRA = "plots"  # the pyproject.toml extra that installs the optional dependencies


class MissingDependency(ImportError):
    """An optional package is not installed; the message names what needs it and the install command."""


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def require(module: str, needed_for: str):
    """The imported ``module``, or :class:`MissingDependency` saying that ``needed_for`` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{needed_for} needs {module}: pip install 'vil[{EXTRA}]'") from None

"""Figures written to files: matplotlib (an optional dependency) on its file-only backend, each file written
atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io_utils import atomic_write
from .optional import require


def pyplot(needed_for: str):
    """``matplotlib.pyplot`` on the Agg backend (files only, no display); without matplotlib a
    :class:`~vil.utils.optional.MissingDependency` says what needs it and how to install it.
    """
    matplotlib = require("matplotlib", needed_for)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, PNG without one) atomically, then close it."""
    import matplotlib.pyplot as plt

    file_format = Path(path).suffix.lstrip(".") or "png"
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format=file_format, dpi=dpi))
    finally:
        plt.close(fig)

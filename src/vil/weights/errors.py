"""Exceptions for weight files that cannot be loaded, with messages that name the file and the problem."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A file or state dict that cannot be loaded as ViL weights: not a checkpoint, truncated, another
    architecture, keys that do not fit the model. A ValueError, so that callers validating user input catch it.
    """


class WeightsDownloadError(OSError):
    """Downloading released weights failed (no network, HTTP error); the message says how to use a local file."""

"""Process-level helpers."""

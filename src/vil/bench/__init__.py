"""Benchmarks: speed and memory of ViL against its baselines, measured side by side (docs/design.md §6)."""

"""Benchmarks: speed and memory of ViL against its baselines, measured side by side (DESIGN.md section 4)."""

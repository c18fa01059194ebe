"""Log-log plots of time and memory against the number of tokens: linear and quadratic growth side by side."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..utils.figures import pyplot, save_figure
from .speed import Row


def plot_scaling(rows: list[Row], path: Path, title: str = "") -> Path:
    """One figure: time (top) and peak memory (bottom) against tokens, inference (left) and training (right)."""
    plt = pyplot("vil bench --plot")
    modes = [m for m in ("infer", "train") if any(r.mode == m for r in rows)]
    fig, axes = plt.subplots(2, len(modes), figsize=(6.5 * len(modes), 9), squeeze=False)
    for column, mode in enumerate(modes):
        series: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            if row.mode == mode and row.seconds is not None:
                series[row.contender].append(row)
        for contender, points in series.items():
            points.sort(key=lambda r: r.tokens)
            tokens = [r.tokens for r in points]
            style = "--" if "parallel" in contender or "official" in contender else "-"
            axes[0][column].plot(tokens, [r.seconds / r.batch for r in points], style, marker="o", label=contender)
            axes[1][column].plot(tokens, [max(r.peak_mib, 1e-3) for r in points], style, marker="o", label=contender)
        axes[0][column].set_title(f"{mode}: time per image")
        axes[0][column].set_ylabel("seconds per image")
        axes[1][column].set_title(f"{mode}: peak memory of a step")
        axes[1][column].set_ylabel("MiB")
        for axis in (axes[0][column], axes[1][column]):
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xlabel("tokens")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)

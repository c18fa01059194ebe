"""The study's bar plot: mean top-1 per design with the sample std over seeds as error bars and each seed as a dot."""

from __future__ import annotations

from pathlib import Path

from ..utils.figures import pyplot, save_figure
from .results import DesignResult


def plot_study(results: list[DesignResult], reference: str, title: str, path: Path) -> Path:
    plt = pyplot("the study plot")
    shown = [r for r in results if r.mean is not None]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(shown) + 2), 4.5), constrained_layout=True)
    positions = range(len(shown))
    colors = ["tab:orange" if r.design == reference else "tab:blue" for r in shown]
    ax.bar(positions, [r.mean for r in shown], yerr=[r.std or 0.0 for r in shown], color=colors, capsize=4, alpha=0.8)
    for x, r in zip(positions, shown, strict=True):
        ax.plot([x] * len(r.top1), r.top1, "k.", markersize=5, zorder=3)
        ax.annotate(
            f"{r.mean:.2f}\n{r.params / 1e3:.0f}k params",
            (x, max(*r.top1, r.mean + (r.std or 0.0))),  # above the highest seed and the error bar
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    # accuracies of competing designs are close: zoom into the range they span instead of starting at 0
    values = [v for r in shown for v in r.top1]
    if values:
        low, high = min(values), max(values)
        margin = max(0.5, 0.6 * (high - low))
        ax.set_ylim(max(0.0, low - margin), min(100.0, high + margin) + 0.3 * margin)
    ax.set_xticks(list(positions), [r.design for r in shown], rotation=20, ha="right")
    ax.set_ylabel("top-1 (%): mean ± std over seeds (dots: seeds)\nthe axis does not start at 0")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi=110)

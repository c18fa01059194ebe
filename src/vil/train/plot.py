"""curves.png: training and validation loss, accuracy and learning rate over the epochs."""

from __future__ import annotations

from pathlib import Path

from ..utils.figures import pyplot, save_figure


def plot_curves(history: list[dict], path: Path) -> Path:
    """Three panels from the per-epoch metric rows: loss, top-1/top-5 accuracy, learning rate."""
    plt = pyplot("curves.png")
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="validation")
    ax_loss.set(title="loss", xlabel="epoch", yscale="log")
    for key, label in (("val_top1", "top-1"), ("val_top5", "top-5"), ("ema_val_top1", "EMA top-1")):
        if history[0].get(key) is not None:
            ax_acc.plot(epochs, [r[key] for r in history], label=label)
    ax_acc.set(title="validation accuracy (%)", xlabel="epoch")
    ax_lr.plot(epochs, [r["lr"] for r in history])
    ax_lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.legend()
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=100)

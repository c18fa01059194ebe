"""Human-readable progress of a run: tqdm bars (run and epoch, with throughput and ETA) and one line per epoch.

The trainer reports to whatever object it is given (the CLI passes a ``ConsoleProgress``); library callers that
want silence pass nothing. Bars go to stderr, and only to a terminal (in a log file they would be thousands of
lines); epoch lines, with the run's ETA, go to stdout.
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

from .evaluate import format_accuracy


class ConsoleProgress:
    def __init__(self):
        self.bars = sys.stderr.isatty()
        self.run_bar = None
        self.epoch_bar = None
        self.images_per_step = 0
        self.epochs_timed: list[float] = []

    def message(self, text: str) -> None:
        tqdm.write(text, file=sys.stdout)

    def run_started(self, facts: dict, resumed_epoch: int) -> None:
        model = facts["model_config"]
        self.message(
            f"model: {facts['model_name']}: ViL v{model['version']}, dim {model['dim']}, {model['depth']} blocks, "
            f"patch {model['patch_size'][0]} stride {model['patch_stride'][0]}, {model['img_size'][0]} px, "
            f"{facts['params']:,} parameters"
        )
        test = f"{facts['test_images']:,} test (scored once, at the end)" if facts["test_images"] else "no test split"
        self.message(
            f"data: {facts['dataset']}, {len(facts['classes'])} classes: {facts['train_images']:,} training, "
            f"{facts['val_images']:,} validation ({facts['val_source']}), {test}"
        )
        self.message(
            f"device: {facts['device']} ({facts['amp_dtype']}, {facts['threads']} thread(s)), {facts['batch_plan']}, "
            f"peak lr {facts['peak_lr']:.2e}, {facts['steps_per_epoch']} steps per epoch"
        )
        if resumed_epoch:
            self.message(f"resuming after epoch {resumed_epoch}")

    def epoch_started(self, epoch: int, epochs: int, steps: int, images_per_step: int) -> None:
        self.epoch_start, self.epochs, self.images_per_step = time.monotonic(), epochs, images_per_step
        if not self.bars:
            return
        if self.run_bar is None:
            self.run_bar = tqdm(
                total=epochs, initial=epoch - 1, desc="run", unit="epoch", position=0, dynamic_ncols=True
            )
        self.epoch_bar = tqdm(
            total=steps * images_per_step,
            desc=f"epoch {epoch}/{epochs}",
            unit="img",
            unit_scale=True,
            position=1,
            leave=False,
            dynamic_ncols=True,
        )

    def step(self, loss: float, lr: float) -> None:
        if self.epoch_bar is None:
            return
        self.epoch_bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        self.epoch_bar.update(self.images_per_step)

    def epoch_finished(self, row: dict) -> None:
        self.epochs_timed.append(time.monotonic() - self.epoch_start)
        if self.epoch_bar is not None:
            self.epoch_bar.close()
            self.run_bar.update(1)
            self.run_bar.set_postfix(val_top1=f"{row['val_top1']:.2f}%")
        remaining = (self.epochs - row["epoch"]) * sum(self.epochs_timed) / len(self.epochs_timed)
        parts = [
            f"epoch {row['epoch']:>3d}",
            f"train loss {row['train_loss']:.4f}",
            f"val loss {row['val_loss']:.4f}",
            "val " + format_accuracy(row["val_top1"], row["val_top5"]),
        ]
        if "ema_val_top1" in row:
            parts.append(f"EMA val top-1 {row['ema_val_top1']:6.2f}%")
        parts += [f"lr {row['lr']:.2e}", f"{row['images_per_second']:.0f} img/s", f"{row['epoch_seconds']:.1f} s"]
        if remaining > 0:
            parts.append(f"ETA {_duration(remaining)}")
        self.message("  ".join(parts))

    def close(self) -> None:
        for bar in (self.epoch_bar, self.run_bar):
            if bar is not None:
                bar.close()
        self.run_bar = self.epoch_bar = None


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"

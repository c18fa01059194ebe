"""Progress of a segmentation run: a tqdm bar over the iterations (stderr, terminals only) with loss, lr and ETA,
and one line per validation with the run's ETA (stdout)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

HEAD_NAMES = {"upernet": "UperNet", "linear": "linear head"}


class SegProgress:
    def __init__(self):
        self.bar = None
        self.start_step = 0
        self.iters = 0
        self.started = time.monotonic()

    def message(self, text: str) -> None:
        tqdm.write(text, file=sys.stdout)

    def run_started(self, facts: dict, step: int, iters: int) -> None:
        config = facts["segmenter_config"]
        self.message(
            f"model: {config['backbone']} {config['backbone_args'] or ''} + {HEAD_NAMES[config['head']]}, "
            f"{facts['params']:,} parameters{_with_aux(facts)}, {config['img_size']} px crops"
        )
        self.message(
            f"data: {facts['dataset']} ({facts['train_images']:,} training / {facts['val_images']:,} held-out images, "
            f"{len(facts['classes'])} classes)"
        )
        self.message(
            f"device: {facts['device']} ({facts['amp_dtype']}, {facts['threads']} thread(s)), {facts['batch_plan']}, "
            f"peak lr {facts['peak_lr']:.2e}, {iters} iterations"
        )
        if step:
            self.message(f"resuming after iteration {step}")
        self.start_step, self.iters, self.started = step, iters, time.monotonic()
        if sys.stderr.isatty():
            self.bar = tqdm(total=iters, initial=step, desc="train", unit="it", dynamic_ncols=True)

    def step(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)

    def evaluated(self, row: dict) -> None:
        done = row["step"] - self.start_step
        remaining = (self.iters - row["step"]) * (time.monotonic() - self.started) / max(done, 1)
        parts = [f"iteration {row['step']:>6d}/{self.iters}", f"mIoU {_pct(row['miou'])}", f"aAcc {_pct(row['aacc'])}",
                 f"mAcc {_pct(row['macc'])}", f"lr {row['lr']:.2e}", f"{row['seconds']:.1f} s"]  # fmt: skip
        if row["step"] < self.iters:
            parts.append(f"ETA {int(remaining) // 60}m{int(remaining) % 60:02d}s")
        self.message("  ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _with_aux(facts: dict) -> str:
    extra = facts["params_with_aux"] - facts["params"]
    return f" (+ {extra:,} in the auxiliary head, training only)" if extra else ""


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}%"

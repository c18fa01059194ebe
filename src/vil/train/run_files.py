"""The files of a run directory, all written by rank 0 and atomically (a reader never sees half a file).

config.json            the TrainConfig and facts about the run (devices, batch split, parameters, ...)
metrics.csv, .jsonl    one row per epoch (rewritten from the checkpoint's history, so never ahead of it)
tensorboard/           TensorBoard event files: per-step loss and lr, per-epoch metrics
curves.png             loss, accuracy and lr over the epochs
summary.json           the outcome: top1, top5, epochs, seconds, skipped files, ...
skipped_files.txt      files that were left out, with the reason
checkpoint_latest.pt   everything to resume (--resume)
model_best.safetensors, model_final.safetensors, model_ema.safetensors   weights + classes + preprocessing
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from ..data.folder import BadFile
from ..io_utils import write_json, write_text
from ..utils.optional import EXTRA, available
from .config import TrainConfig

CONFIG = "config.json"
METRICS_CSV = "metrics.csv"
METRICS_JSONL = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CURVES = "curves.png"
SUMMARY = "summary.json"
SKIPPED = "skipped_files.txt"
CHECKPOINT = "checkpoint_latest.pt"
MODEL_BEST = "model_best.safetensors"
MODEL_FINAL = "model_final.safetensors"
MODEL_EMA = "model_ema.safetensors"


def write_config(run_dir: Path, config: TrainConfig, facts: dict) -> Path:
    return write_json(run_dir / CONFIG, {"config": config.to_dict(), "run": facts})


def write_summary(run_dir: Path, summary: dict) -> Path:
    return write_json(run_dir / SUMMARY, summary)


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary.json, or None before the run has written one."""
    path = run_dir / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def read_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run directory was started with (for --resume)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no {CONFIG} (nothing to resume)")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text())["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a run config written by vil train: {error}") from None


def write_history(run_dir: Path, history: list[dict]) -> None:
    """The per-epoch metrics as CSV (for spreadsheets) and JSON lines (for programs)."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(run_dir / METRICS_CSV, buffer.getvalue())
    write_text(run_dir / METRICS_JSONL, "".join(json.dumps(row) + "\n" for row in history))


def write_skipped(run_dir: Path, skipped: list[BadFile]) -> None:
    write_text(run_dir / SKIPPED, "".join(f"{bad.path}\t{bad.reason}\n" for bad in skipped))


def open_tensorboard(run_dir: Path, purge_step: int | None):
    """A TensorBoard writer for the run directory, or None (one warning line) where tensorboard is not installed."""
    if not available("tensorboard"):
        logging.getLogger(__name__).warning(
            "no TensorBoard logs: tensorboard is not installed (pip install 'vil[%s]')", EXTRA
        )
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / TENSORBOARD), purge_step=purge_step)

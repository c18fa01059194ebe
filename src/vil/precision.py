"""Mixed precision: which autocast dtype a precision setting means on a device, and the autocast context."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: full fp32). "auto" is bf16 on GPUs that support it, fp16 on older GPUs (with a
    gradient scaler), fp32 on CPUs, where bf16 autocast is supported but usually slower.
    """
    check_precision(precision)
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a GPU (gradient scaling); use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the forward pass (None: full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

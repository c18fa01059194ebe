"""Timing and peak-memory measurement that is fair to every contender.

Timing: contenders run interleaved (A, B, C, A, B, C, ...) after a warm-up, so that a slow phase of the shared
machine hits all of them; we report the median. Memory: the peak resident set size (CPU) or the peak allocated
bytes (CUDA) during the measured calls, above what was resident before them.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    contenders: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call for each contender, measured in round-robin order."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def _read_status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "bytes" is set, on exit, to the peak memory used above the level at entry."""
    result = {"bytes": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device) - base
        return
    # CPU: return freed heap to the OS so the baseline is what is really live, then reset the RSS high-water mark
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base_kb = _read_status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    yield result
    result["bytes"] = (_read_status_kb("VmHWM") - base_kb) * 1024

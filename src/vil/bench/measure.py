"""Timing and peak-memory measurement that is fair to every contender.

Timing: contenders run interleaved (A, B, C, A, B, C, ...) after a warm-up, so that a slow phase of the shared
machine hits all of them; we report the median. Memory: the peak of the bytes in use (live allocations) during
a measured call, above what was in use before it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")
    ]  # fmt: skip


def _heap_bytes_in_use() -> Callable[[], int]:
    """A function returning the bytes malloc has handed out and not taken back (glibc's mallinfo2)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd  # heap chunks in use + mmapped chunks

    return in_use


@contextmanager
def peak_memory(device: torch.device, interval: float = 0.0005):
    """Yields a dict whose "bytes" is set, on exit, to the peak memory in use above the level at entry.

    CUDA: the caching allocator's peak of allocated bytes. CPU: the bytes glibc malloc has handed out and not
    taken back, sampled every ``interval`` seconds by a background thread (torch ops release the GIL). This
    counts live tensors like the CUDA figure; the resident set size would also count freed memory that malloc
    keeps and fragmentation, which depend on the order of allocations rather than on the model.
    """
    result = {"bytes": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device) - base
        return
    in_use = _heap_bytes_in_use()
    base = in_use()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], in_use())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        peak[0] = max(peak[0], in_use())
        done.set()
        sampler.join()
    result["bytes"] = peak[0] - base

"""glibc malloc settings that let PyTorch reuse freed CPU memory instead of returning it to the OS.

By default glibc serves large tensors with fresh mmap() calls and unmaps them on free, so every new activation
tensor costs page faults: ViL-T at 1024 pixels spent ~30% of its CPU time there (measured with the benchmark,
one thread). Keeping freed memory in the heap removes that cost. It is the same effect PyTorch's performance
guide gets from jemalloc or tcmalloc, without another library. The resident set then stays at its high-water
mark, which is what peak-memory measurements report anyway.

The setting is process-wide. The library applies it on first use, when the first :class:`~vil.VisionLSTM` is
built (:func:`tune_on_first_use`), so that a user's own script runs as fast as the benchmarks say;
``VIL_MALLOC_TUNING=0`` in the environment leaves malloc alone.

Keeping freed memory has one cost in training: the forward pass frees many same-sized temporaries (3 MiB each for
ViL-T at 1024 px), and malloc places the small tensors saved for the backward pass inside those holes, so that the
next temporary no longer fits and the heap grows while a good part of it is free. :func:`release_when_reached`
hands the free pages of the heap back to the OS (``malloc_trim``) when the backward pass starts, the moment the
resident set would otherwise peak with them in it: at 1024 px this lowered ViL-T's training-step memory growth by
~100 MiB (943-970 to 842-854 MiB), and at 224 x 8 by ~45 MiB, for ~20 ms per 1024 px step (measured with
benchmarks/user_script.py; a one-off measurement, see docs/benchmarks.md). The backward pass then faults those
pages in again, and so does the next forward pass: at 224 x 8 that cost more than the ~45 MiB it saved was worth
(steps 2-4 % slower with the trim), so only sequences of TRIM_MIN_TOKENS tokens per image or more are trimmed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

import torch

from .gradient_buffer import cpu_backward_ahead

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 2**30  # allocations above 1 GiB still get their own mapping
_TRIM_THRESHOLD_MAX = 2**31 - 1
SWITCH = "VIL_MALLOC_TUNING"  # "0": the library leaves malloc at its defaults
# From this many tokens per image on (512 px at patch 16), where memory is what limits the image size, the heap is
# trimmed when the backward pass starts. ViL-T training steps alternated in one process with and without the trim at
# 224 x 8 (196 tokens), 6-16 pairs, three runs each: without it 0.95-0.99x the time at two threads and 0.95-1.01x
# at one (medians 0.98 and 0.96x), 15-17 thousand page faults fewer per step, for ~45 MiB more growth.
TRIM_MIN_TOKENS = 1024
_tuned: bool | None = None  # None until first use


@functools.cache  # finding the C library runs ldconfig in a subprocess (milliseconds): once per process
def _glibc_function(name: str):
    """The named function of the C library, or None where it is not glibc (or has no such function)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse. Returns False (and changes nothing) where glibc is not in use."""
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_MAX) == 1
    logger.debug("glibc malloc tuned for tensor reuse: %s", ok)
    return ok


def tune_on_first_use() -> bool:
    """:func:`tune_cpu_allocator` once per process, unless ``VIL_MALLOC_TUNING=0``. Returns whether malloc is tuned."""
    global _tuned
    if _tuned is None:
        _tuned = os.environ.get(SWITCH, "1") != "0" and tune_cpu_allocator()
    return _tuned


def release_when_reached(x: torch.Tensor) -> None:
    """When the backward pass reaches x (B, N, D), hand the heap's free pages back to the OS (glibc's ``malloc_trim``),
    if the library tuned malloc (:func:`tune_on_first_use`), x is a CPU tensor that needs a gradient and its sequences
    are long (TRIM_MIN_TOKENS)."""
    long_enough = x.shape[1] >= TRIM_MIN_TOKENS
    trim = _glibc_function("malloc_trim") if _tuned and long_enough and cpu_backward_ahead(x) else None
    if trim is None:
        return

    def release(grad: torch.Tensor) -> None:  # must not hold x: x -> hook -> x would keep the whole graph alive
        trim(0)

    x.register_hook(release)

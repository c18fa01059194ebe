"""glibc malloc settings that let PyTorch reuse freed CPU memory instead of returning it to the OS.

By default glibc serves large tensors with fresh mmap() calls and unmaps them on free, so every new activation
tensor costs page faults: ViL-T at 1024 pixels spent ~30% of its CPU time there (measured with the benchmark,
one thread). Keeping freed memory in the heap removes that cost. It is the same effect PyTorch's performance
guide gets from jemalloc or tcmalloc, without another library. The resident set then stays at its high-water
mark, which is what peak-memory measurements report anyway.

The setting is process-wide. The library applies it on first use, when the first :class:`~vil.VisionLSTM` is
built (:func:`tune_on_first_use`), so that a user's own script runs as fast as the benchmarks say;
``VIL_MALLOC_TUNING=0`` in the environment leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 2**30  # allocations above 1 GiB still get their own mapping
_TRIM_THRESHOLD_MAX = 2**31 - 1
SWITCH = "VIL_MALLOC_TUNING"  # "0": the library leaves malloc at its defaults
_tuned: bool | None = None  # None until first use


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse. Returns False (and changes nothing) where glibc is not in use."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
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

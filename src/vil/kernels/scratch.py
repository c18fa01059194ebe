"""Reused buffers for the kernels' short-lived results, so that every block does not allocate them afresh.

A ViL block's q, k, v (three E-wide tensors) and its gated branch output live only while the block computes
(forward, or its recomputation in the backward pass); allocating them anew in each of 24 blocks leaves holes in
the heap that the tensors kept for the backward pass do not fit exactly: at 1024 px that fragmentation raised the
resident memory of a ViL-T training step by a quarter over its live tensors. A buffer here is handed out again by
the next call with the same name, so a caller asks for one only where the previous result is dead by then: with
autograd off (nothing can keep it for a backward pass), inside one block.
"""

from __future__ import annotations

import threading

import torch

_local = threading.local()  # one set of buffers per thread: two threads may run models at once


def reused(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A tensor of ``shape`` with ``like``'s dtype and device, the same one at every call with this name and shape
    in this thread (a new shape replaces the old buffer). Its previous contents are undefined."""
    buffers = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device:
        buffers[name] = buffer = like.new_empty(shape)
    return buffer

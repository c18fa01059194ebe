"""Parameter gradients made in one piece when the backward pass starts, instead of one by one as it goes.

In a backward pass each block frees its saved activations (E-wide tensors of a few MiB) and its parameters'
gradients are allocated (a few hundred, mostly small). glibc's malloc places each small gradient inside the
largest free space at hand, which by then are the freed activations: every hole is split, the next block's
temporaries no longer fit in any of them, and the heap grows although most of it is free. At 1024 px this raised
a ViL-T training step's peak resident memory by ~300 MiB (measured with mallinfo2: the heap kept growing through
the backward pass while the live tensors shrank). Allocating all the gradients the blocks will receive at once,
in one buffer, when the backward pass reaches the last block, leaves the holes whole.

Only where this is safe and changes nothing else: CPU tensors (CUDA's caching allocator has no such problem),
gradients that do not exist yet (accumulation into existing ones is untouched), parameters that the pass is certain
to reach (every parameter of a block that produced the output), and outside torch.compile. The buffer starts at
zero and autograd adds each gradient into it in place: the values are those autograd would have stored.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def cpu_backward_ahead(x: torch.Tensor) -> bool:
    """Whether x is a CPU tensor on its way to a backward pass, outside torch.compile: where the heap's backward-pass
    hooks (this module's and :func:`vil.utils.cpu_allocator.release_when_reached`) apply."""
    return torch.is_grad_enabled() and x.requires_grad and x.device.type == "cpu" and not torch.compiler.is_compiling()


def allocate_gradients_when_reached(x: torch.Tensor, parameters: Iterable[nn.Parameter]) -> None:
    """When the backward pass reaches x, give each of ``parameters`` that needs a gradient and has none a zero one,
    all views of one buffer. Only for CPU tensors outside torch.compile (:func:`cpu_backward_ahead`); the parameters
    must be certain to receive a gradient from the pass through x."""
    if not cpu_backward_ahead(x):
        return
    wanted = [p for p in parameters if p.requires_grad]
    dtype = x.dtype  # the hook must not hold x: x -> hook -> x would keep the whole graph alive
    if not wanted or any(p.dtype != dtype or p.device.type != "cpu" for p in wanted):
        return

    def allocate(grad: torch.Tensor) -> None:
        missing = [p for p in wanted if p.grad is None]
        if not missing:
            return
        buffer = torch.zeros(sum(p.numel() for p in missing), dtype=dtype)
        for p, piece in zip(missing, buffer.split([p.numel() for p in missing]), strict=True):
            p.grad = piece.view_as(p)

    x.register_hook(allocate)

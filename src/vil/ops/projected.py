"""The mLSTM cell fed by projections that are recomputed in the backward pass instead of stored.

In a ViL block q, k and v are cheap (headwise) projections of tensors the block keeps for its backward pass
anyway. Storing q, k and v as well would cost three E-wide tensors per block; here the backward pass
recomputes them from the projection's inputs, at the price of three small batched products.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.autograd.function import once_differentiable

from .backend import choose_backend, mlstm
from .chunkwise import chunkwise_backward, chunkwise_forward
from .common import EPS
from .parallel import parallel_backward, parallel_forward
from .state import empty_state

Projection = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

# Below this many elements in the projection's first input, recomputing saves too little memory to pay for its
# Python overhead: tiny models (the digits run: 16 tokens) then train faster with plain autograd.
RECOMPUTE_MIN_ELEMENTS = 2**18


def recompute_pays_off(x: torch.Tensor) -> bool:
    """Whether keeping less and recomputing in the backward pass is worth it for an activation like x."""
    return torch.is_grad_enabled() and x.numel() >= RECOMPUTE_MIN_ELEMENTS


def mlstm_projected(
    project: Projection,
    inputs: Sequence[torch.Tensor],
    igate: torch.Tensor,
    fgate: torch.Tensor,
    backend: str = "auto",
    chunk_size: int | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """``mlstm(*project(*inputs), igate, fgate, backend, chunk_size)``, keeping ``inputs`` rather than q, k, v.

    ``project(*inputs)`` must return q, k, v of shape (B, NH, S, DH) and be a pure function of its inputs.
    Falls back to the plain call where the saving does not apply or cannot be made safely: without gradients,
    for small inputs (RECOMPUTE_MIN_ELEMENTS), under autocast (the recomputation would have to replay it), while
    compiling, and for the recurrent form.
    """
    q, k, v = None, None, None
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, igate, fgate))
    plain = (
        not needs_grad
        or not recompute_pays_off(inputs[0])
        or torch.is_autocast_enabled(igate.device.type)
        or torch.compiler.is_compiling()
    )
    if not plain:
        with torch.no_grad():
            q, k, v = project(*inputs)
        form, auto_chunk = choose_backend(q.shape[2], q.shape[3], needs_grad=True, stateful=False)
        form = form if backend == "auto" else backend
        plain = form not in ("parallel", "chunkwise") or q.dtype not in (torch.float32, torch.float64)
    if plain:
        return mlstm(*project(*inputs), igate, fgate, backend=backend, chunk_size=chunk_size, eps=eps)
    options = (form, chunk_size or auto_chunk, eps)
    return _ProjectedMLSTM.apply(project, options, (q, k, v), igate, fgate, *inputs)


class _ProjectedMLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, project, options, qkv, igate, fgate, *inputs):
        form, chunk_size, eps = options
        if form == "parallel":
            h, saved = parallel_forward(*qkv, igate, fgate, eps)
        else:
            state = empty_state(qkv[0], qkv[2])
            (h, *_), saved = chunkwise_forward(*qkv, igate, fgate, *state, chunk_size, eps)
        ctx.save_for_backward(igate, fgate, *saved, *inputs)
        ctx.project, ctx.options, ctx.num_saved = project, options, len(saved)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, dh):
        form, chunk_size, eps = ctx.options
        igate, fgate, *rest = ctx.saved_tensors
        saved, inputs = rest[: ctx.num_saved], rest[ctx.num_saved :]
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
            qkv = ctx.project(*inputs)
        plain_qkv = [t.detach() for t in qkv]
        if form == "parallel":
            dq, dk, dv, d_igate, d_fgate = parallel_backward(*plain_qkv, igate, fgate, saved, dh, eps)
        else:
            dq, dk, dv, d_igate, d_fgate, *_ = chunkwise_backward(*plain_qkv, igate, fgate, saved, dh, chunk_size, eps)
        wanted = [x for x in inputs if x.requires_grad]
        found = iter(torch.autograd.grad(qkv, wanted, (dq, dk, dv), allow_unused=True))
        input_grads = [next(found) if x.requires_grad else None for x in inputs]
        return None, None, None, d_igate, d_fgate, *input_grads

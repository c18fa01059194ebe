"""The mLSTM cell fed by projections that are recomputed in the backward pass instead of stored.

In a ViL block q, k and v are cheap (headwise) projections of tensors the block keeps for its backward pass
anyway. Storing q, k and v as well would cost three E-wide tensors per block; here the backward pass
recomputes them from the projection's inputs, at the price of three small batched products.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.autograd.function import once_differentiable

from .backend import choose_backend, mlstm, runs_triton
from .chunkwise import chunkwise_backward, chunkwise_forward
from .common import EPS
from .parallel import parallel_backward, parallel_forward
from .state import empty_state

Projection = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]  # q k v i f

# Below this many elements in the projection's first input, recomputing saves too little memory to pay for its
# Python overhead: tiny models (the digits run: 16 tokens) then train faster with plain autograd.
RECOMPUTE_MIN_ELEMENTS = 2**18


def recompute_pays_off(x: torch.Tensor) -> bool:
    """Whether keeping less and recomputing in the backward pass is worth it for an activation like x."""
    return torch.is_grad_enabled() and x.numel() >= RECOMPUTE_MIN_ELEMENTS


def hand_recompute_applies(x: torch.Tensor) -> bool:
    """Whether a hand-written recomputing autograd Function should run for an activation like x: it pays off, and
    neither autocast nor torch.compile is active (the recomputation would have to replay them).
    """
    return recompute_pays_off(x) and not torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type)


def grad_leaves(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of saved tensors to recompute from in a backward pass, requiring grad where they did."""
    return [x.detach().requires_grad_(x.requires_grad) for x in tensors]


def leaf_grads(outputs, leaves: Sequence[torch.Tensor], grad_outputs) -> list[torch.Tensor | None]:
    """The gradients of ``outputs`` for every leaf that requires one; None for the others."""
    wanted = [x for x in leaves if x.requires_grad]
    found = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True))
    return [next(found) if x.requires_grad else None for x in leaves]


def mlstm_projected(
    project: Projection,
    inputs: Sequence[torch.Tensor],
    backend: str = "auto",
    chunk_size: int | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """``mlstm(*project(*inputs), backend, chunk_size)``, keeping ``inputs`` rather than q, k, v and the gates.

    ``project(*inputs)`` must return q, k, v of shape (B, NH, S, DH) and the input and forget gates' pre-activations
    (B, NH, S), and be a pure function of its inputs. It may have its own backward:
    ``project.hand_backward_applies(*inputs)`` and ``project.hand_backward(inputs, (dq, dk, dv, d_igate,
    d_fgate))`` -> dL/d inputs; otherwise autograd differentiates its recomputation. It may also run the parallel
    form on its own inputs, q, k, v never materialised: ``project.cell_shape(*inputs)`` -> (B, NH, S, DH),
    ``project.parallel_forward(inputs, eps)`` -> (h, saved) or None where it cannot, with saved[:2] what
    :func:`vil.ops.parallel.parallel_backward` needs, and ``project.parallel_backward(inputs, saved, dh, eps)`` ->
    dL/d inputs (the projection's backward pass included), or None where it cannot (then q, k, v are recomputed).
    Falls back to the plain call where the saving does not apply or cannot be made safely: without gradients,
    for small inputs (RECOMPUTE_MIN_ELEMENTS), under autocast (the recomputation would have to replay it), while
    compiling, for the recurrent form and the Triton kernels, and for half-precision inputs.
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    by_hand = (
        needs_grad
        and hand_recompute_applies(inputs[0])
        and backend in ("auto", "parallel", "chunkwise")  # "auto" without a state never picks the recurrent form
        and not runs_triton(backend, inputs[0])
        and inputs[0].dtype in (torch.float32, torch.float64)  # q, k, v take it: autocast is off here
    )
    if not by_hand:
        fused = None if needs_grad else _fused_parallel_forward(project, inputs, backend, eps, needs_grad=False)
        if fused is not None:
            return fused[0]
        return mlstm(*project(*inputs), backend=backend, chunk_size=chunk_size, eps=eps)
    return _ProjectedMLSTM.apply(project, (backend, chunk_size, eps), *inputs)


def _fused_parallel_forward(project, inputs: Sequence[torch.Tensor], backend: str, eps: float, needs_grad: bool):
    """``project.parallel_forward(inputs, eps)`` where the parallel form is the one to run and the projection has
    it; else None. Not while compiling: the kernels step aside there anyway, and asking (the thread count) would
    break torch.compile's graph."""
    if torch.compiler.is_compiling() or not hasattr(project, "parallel_forward") or backend not in ("auto", "parallel"):
        return None
    _, _, seq_len, head_dim = project.cell_shape(*inputs)
    if backend == "auto" and choose_backend(seq_len, head_dim, needs_grad, stateful=False)[0] != "parallel":
        return None
    return project.parallel_forward(inputs, eps)


class _ProjectedMLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, project, options, *inputs):
        backend, chunk_size, eps = options
        fused = _fused_parallel_forward(project, inputs, backend, eps, needs_grad=True)
        ctx.fused = fused is not None
        if ctx.fused:  # q, k, v never materialised
            form, (h, saved) = "parallel", fused
        else:
            projected = project(*inputs)
            form, auto_chunk = choose_backend(projected[0].shape[2], projected[0].shape[3], True, stateful=False)
            form, chunk_size = form if backend == "auto" else backend, chunk_size or auto_chunk
            if form == "parallel":
                h, saved = parallel_forward(*projected, eps)
            else:
                q, _, v, *_ = projected
                (h, *_), saved = chunkwise_forward(*projected, *empty_state(q, v), chunk_size, eps)
        ctx.save_for_backward(*saved, *inputs)
        ctx.project, ctx.options, ctx.num_saved = project, (form, chunk_size, eps), len(saved)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, dh):
        form, chunk_size, eps = ctx.options
        tensors = ctx.saved_tensors  # once: non-reentrant checkpointing refuses a second unpacking
        saved, inputs = tensors[: ctx.num_saved], tensors[ctx.num_saved :]
        # the projection's own backward where it has one (the fused kernels), else autograd of its recomputation
        applies = getattr(ctx.project, "hand_backward_applies", None)
        by_hand = applies is not None and applies(*inputs)
        d_inputs = ctx.project.parallel_backward(inputs, saved, dh, eps) if by_hand and ctx.fused else None
        if d_inputs is not None:  # no projection made at all
            return None, None, *d_inputs
        saved = saved[:2] if ctx.fused else saved
        if by_hand:
            projected = plain = ctx.project(*inputs)
        else:
            with torch.enable_grad():
                inputs = grad_leaves(inputs)
                projected = ctx.project(*inputs)
            plain = [t.detach() for t in projected]
        if form == "parallel":
            grads = parallel_backward(*plain, saved, dh, eps)
        else:
            grads = chunkwise_backward(*plain, saved, dh, chunk_size, eps)[:5]  # dq, dk, dv, d_igate, d_fgate
        d_inputs = ctx.project.hand_backward(inputs, grads) if by_hand else leaf_grads(projected, inputs, grads)
        return None, None, *d_inputs

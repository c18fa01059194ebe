"""``mlstm``: one entry point for the three forms of the mLSTM cell, with automatic choice of form.

All forms compute the same function (docs/design.md §2); they differ in cost:

===========  =====================  ===================  ===============================
form         time per token & head  memory               use
===========  =====================  ===================  ===============================
parallel     2*S*d                  S^2 per head         short sequences (<= a few 100)
chunkwise    2*L*d + 2*d^2          S*L per head         long sequences: linear in S
recurrent    2*d^2 (Python loop)    d^2 state            streaming, reference
triton       as chunkwise           as chunkwise         CUDA: the chunkwise form in Triton kernels
===========  =====================  ===================  ===============================

On CUDA tensors "auto" picks "triton" when triton is installed (:mod:`vil.ops.triton_cell`), else the PyTorch
forms as on the CPU.

The arithmetic always runs in float32 or float64: under bf16/fp16 autocast the inputs are promoted and the
output is cast back, because the exponentials and the normaliser need the range.
"""

from __future__ import annotations

import contextlib

import torch

from . import triton_cell
from .chunkwise import mlstm_chunkwise
from .common import EPS
from .parallel import mlstm_parallel
from .recurrent import mlstm_recurrent
from .state import MLSTMState, check_state

BACKENDS = ("auto", "parallel", "chunkwise", "recurrent", "triton")


def choose_backend(seq_len: int, head_dim: int, needs_grad: bool, stateful: bool) -> tuple[str, int]:
    """The fastest exact form for a sequence length and head size, and the chunk size to use.

    Per token and head the tiled parallel form costs about S*d multiply-adds and the chunkwise form 2*L*d +
    2*d^2, so the parallel form wins below S = 2 (L' + d) for some L' of the order of the chunk size. The
    constants come from one-thread timings of the cell on this project's CPU with the fused kernels
    (vil.kernels): in inference, chunks of 64 tokens are fastest for every head size (d = 96, 192, 384) and the
    forms cost the same at about 2 (64 + d) tokens. When training, chunks of 64 are fastest for heads up to 128
    (ViL-T: d = 96) and of 128 for larger heads; the crossover is at about 2 (128 + d) tokens (ViL-T: ~450), and
    larger heads keep the parallel form longer (L' = 256).
    """
    large_head = head_dim > 128
    if needs_grad:
        chunk_size, crossover = (128, 2 * (256 + head_dim)) if large_head else (64, 2 * (128 + head_dim))
    else:
        chunk_size, crossover = 64, 2 * (64 + head_dim)
    if stateful or seq_len > crossover:
        return "chunkwise", chunk_size
    return "parallel", chunk_size


def runs_triton(backend: str, x: torch.Tensor) -> bool:
    """Whether ``backend`` runs the Triton kernels for inputs like x: "triton", or "auto" on CUDA with triton."""
    return backend == "triton" or (backend == "auto" and x.device.type == "cuda" and triton_cell.available())


def mlstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    backend: str = "auto",
    chunk_size: int | None = None,
    initial_state: MLSTMState | None = None,
    return_state: bool = False,
    eps: float = EPS,
) -> torch.Tensor | tuple[torch.Tensor, MLSTMState]:
    """The mLSTM cell.

    Args:
        q, k: (B, NH, S, DH); v: (B, NH, S, DHV).
        igate, fgate: (B, NH, S) input and forget gate pre-activations.
        backend: "auto" (default: the fastest exact form for S, DH and whether gradients are needed),
            "parallel", "chunkwise", "recurrent" or "triton" (CUDA tensors, or CPU ones in Triton's interpreter).
        chunk_size: tokens per chunk for "chunkwise" and "triton" (default: chosen by "auto"'s rule; "triton": 64).
        initial_state: state before the first token (not "parallel"); None: no past.
        return_state: also return the state after the last token (not "parallel").
    Returns:
        h: (B, NH, S, DHV) in the dtype of q, and the final :class:`MLSTMState` if ``return_state``.
    """
    _check_inputs(q, k, v, igate, fgate, backend, chunk_size)
    stateful = initial_state is not None or return_state
    if initial_state is not None:
        check_state(initial_state, q, v)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, igate, fgate))
    auto_backend, auto_chunk = choose_backend(q.shape[2], q.shape[3], needs_grad, stateful)
    if backend == "auto":
        backend = "triton" if runs_triton(backend, q) and triton_cell.supports(q, v) else auto_backend
    if backend == "parallel" and stateful:
        raise ValueError(
            "backend='parallel' has no state: use 'chunkwise' or 'recurrent' with initial_state or return_state"
        )

    if backend == "triton":  # reads float32, float16 and bfloat16 as they are; computes in float32
        with _autocast_off(q.device.type):
            return triton_cell.mlstm_triton(q, k, v, igate, fgate, chunk_size, initial_state, return_state, eps)

    out_dtype = q.dtype
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    with _autocast_off(q.device.type):
        q, k, v, igate, fgate = (t.to(compute_dtype) for t in (q, k, v, igate, fgate))
        if initial_state is not None:
            initial_state = MLSTMState(*(t.to(compute_dtype) for t in initial_state))
        if backend == "parallel":
            result = mlstm_parallel(q, k, v, igate, fgate, eps=eps)
        elif backend == "chunkwise":
            result = mlstm_chunkwise(
                q, k, v, igate, fgate, chunk_size=chunk_size or auto_chunk,
                initial_state=initial_state, return_state=return_state, eps=eps,
            )  # fmt: skip
        else:
            result = mlstm_recurrent(
                q, k, v, igate, fgate, initial_state=initial_state, return_state=return_state, eps=eps
            )
    if return_state:
        h, state = result
        return h.to(out_dtype), state
    return result.to(out_dtype)


def _autocast_off(device_type: str):
    """A context that turns autocast off; nothing to turn off on devices without autocast (e.g. "meta", where
    shapes and flop counts are computed without data)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _check_inputs(q, k, v, igate, fgate, backend, chunk_size) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown mLSTM backend {backend!r}; expected one of {BACKENDS}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if q.ndim != 4:
        raise ValueError(f"q must have shape (B, NH, S, DH), got {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k has shape {tuple(k.shape)}, expected q's shape {tuple(q.shape)}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v has shape {tuple(v.shape)}, expected (B, NH, S, DHV) = {tuple(q.shape[:3])} + (DHV,)")
    for name, gate in (("igate", igate), ("fgate", fgate)):
        if gate.shape != q.shape[:3]:
            raise ValueError(f"{name} has shape {tuple(gate.shape)}, expected (B, NH, S) = {tuple(q.shape[:3])}")
    if q.shape[2] == 0:
        raise ValueError("the sequence is empty (S = 0)")

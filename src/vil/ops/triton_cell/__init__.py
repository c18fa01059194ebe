"""The mLSTM cell on GPUs: the chunkwise form with Triton kernels, forward and backward, exact gradient.

Why our own kernels rather than ``mlstm_kernels``' (TFLA): their backward pass treats the normaliser
max(|q.n|, exp(-m)) as a constant, so their dq, dk and gate gradients are not those of the cell (about 100 % off
on dq in a trial), and they need padding for ViL's lengths (196, 729) and for head size 96. These kernels compute
the chunkwise form of :mod:`vil.ops.chunkwise` (same gate rows, same stabilisers, same readout backward through
the normaliser), so the Triton path, the PyTorch path and the parallel form agree to float rounding in forward
and backward, for any S (the last chunk is masked, not padded by the caller) and any head size that is a
multiple of 16.

Triton is imported only when the cell runs here: ``import vil`` works without it. On CPU tensors the kernels
run in Triton's interpreter when ``TRITON_INTERPRET=1`` was set before triton was first imported (slow; that is
how the tests run them).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..state import MLSTMState, empty_state

DEFAULT_CHUNK = 64
MAX_CHUNK = 128  # each program holds L x L float32 tiles: larger chunks would hardly fit in registers (not tried)


# Both fixed at import: triton reads TRITON_INTERPRET when it is first imported, and constants keep these checks
# out of torch.compile's guards. find_spec looks for triton without importing it (an import costs a second).
_INSTALLED = importlib.util.find_spec("triton") is not None
_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    """Whether triton is installed."""
    return _INSTALLED


def supports(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the kernels take inputs of these shapes and dtype (what "auto" asks before choosing them)."""
    return q.shape[-1] % 16 == 0 and v.shape[-1] % 16 == 0 and q.dtype != torch.float64


def check_usable(q: torch.Tensor, v: torch.Tensor, chunk_size: int | None) -> None:
    """Raise ValueError with a one-line reason unless backend='triton' can run on tensors like q and v."""
    for name, size in (("q/k", q.shape[-1]), ("v", v.shape[-1])):
        if size % 16:
            raise ValueError(f"backend='triton' needs head sizes that are multiples of 16, got {name} head size {size}")
    if chunk_size is not None and chunk_size > MAX_CHUNK:
        raise ValueError(f"chunk_size for backend='triton' must be at most {MAX_CHUNK}, got {chunk_size}")
    if q.dtype == torch.float64:
        raise ValueError("backend='triton' computes in float32: got float64 inputs (use 'chunkwise' for float64)")
    if not available():
        raise ValueError("backend='triton' needs the triton package: pip install 'vil[gpu]'")
    if q.device.type == "cpu" and not _INTERPRETER:
        raise ValueError(
            "backend='triton' needs CUDA tensors, got CPU ones; on the CPU it runs only in Triton's interpreter "
            "(TRITON_INTERPRET=1 set before Python starts; slow, for tests)"
        )
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"backend='triton' needs CUDA tensors, got {q.device.type} ones")


def mlstm_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    chunk_size: int | None = None,
    initial_state: MLSTMState | None = None,
    return_state: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor | tuple[torch.Tensor, MLSTMState]:
    """The chunkwise mLSTM cell in Triton kernels; arguments as :func:`vil.ops.mlstm`. Inputs in float32, float16
    or bfloat16 are read as they are, the arithmetic is float32; h comes back in q's dtype, the state in float32."""
    check_usable(q, v, chunk_size)
    from .op import mlstm_chunkwise_triton

    state = initial_state if initial_state is not None else empty_state(q.float(), v.float())
    c0, n0, m0 = (t.float().contiguous() for t in state)
    h, c_last, n_last, m_last, *_ = mlstm_chunkwise_triton(
        q.contiguous(), k.contiguous(), v.contiguous(), igate.contiguous(), fgate.contiguous(), c0, n0, m0,
        chunk_size or DEFAULT_CHUNK, eps,
    )  # fmt: skip
    h = h.to(q.dtype)
    return (h, MLSTMState(c=c_last, n=n_last, m=m_last)) if return_state else h

"""Fused CPU kernels for the ViL block and its mLSTM cell, compiled from ``block.c`` and ``cell.c`` at first use.

PyTorch runs the block's cheap parts (the 4x4 headwise q/k/v projections and their reordering into heads, the
gates, the per-head norm + skip + output gate, the depthwise conv + SiLU) as many passes over E-wide tensors; at
ViL-T's sizes these cost more than the mLSTM cell's products. Each kernel in ``block.c``, forward or backward, is
one pass. ``cell.c`` computes the cell itself: the parallel form (forward and backward) in strips of rows, where
there are enough matrices for the threads with the headwise q, k, v projected inside (never written to memory),
and the chunkwise form by chunks (forward, and backward through each chunk's outputs), with register-tiled
products instead of many small batched GEMMs.

The C sources are compiled once per machine with its own compiler and ``-march=native`` (about 1.5 s)
into a cache directory, and loaded with ctypes (:mod:`vil.kernels.build`): no build step at install time and no
Python headers needed. Where no compiler is found, or the build fails, or ``VIL_KERNELS=0`` is set, every caller
falls back to its PyTorch expression (same results up to float rounding); a missing compiler or a failed build is
logged as a warning once.

Each wrapper returns None when it does not apply (not float32 CPU tensors, gradients needed, autocast or
torch.compile active, an unsupported shape); callers then compute the PyTorch expression.

Every kernel runs on ``torch.get_num_threads()`` threads, in PyTorch's own OpenMP pool (see
:mod:`vil.kernels.build`), and gives the same result for any thread count, bit for bit: the work is split into
parts that do not depend on the thread count (tokens for the block kernels, with sums over tokens formed per
part of PART_ROWS tokens and added in order; matrices, strips and chunks for the cell, the projections' weight sums
in its backward pass formed per matrix and added over the batch in order), see block.c and cell.c.
"""

from __future__ import annotations

import torch

from .build import CACHE, SWITCH, disabled, is_disabled, library, reset
from .scratch import reused

ROW_BUFFER = 4096  # the widest row (channels, or a head) a kernel keeps on its stack: ROW_BUFFER in block.c
MAX_CONV_KERNEL = 15  # the conv kernels keep a pointer per tap (and per tap and pixel of a part) on their stack
# Tokens per part of a backward kernel's sums over tokens: a fixed split, so that the sums do not depend on the
# thread count; 1568 tokens (224 px, batch 8) give 49 parts, enough for 49 threads, at up to 15 E + G (2 E + 1)
# floats of scratch each (the headwise backward's sums, G gates).
PART_ROWS = 32

__all__ = [
    "CACHE", "PART_ROWS", "ROW_BUFFER", "SWITCH", "conv2d_silu", "conv2d_silu_backward", "conv2d_silu_supported",
    "disabled", "gated_branch_output", "gated_branch_output_backward", "headwise_backward_applies",
    "headwise_cell_has_work_for_the_threads", "headwise_gates", "headwise_gates_backward", "headwise_qkv",
    "headwise_qkv_backward", "library", "mlstm_chunkwise", "mlstm_chunk_states", "mlstm_chunkwise_backward",
    "mlstm_parallel", "mlstm_parallel_backward", "mlstm_parallel_backward_headwise", "mlstm_parallel_headwise",
    "mlstm_state_backward", "reset", "usable",
]  # fmt: skip


def usable(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernels can compute on these tensors: float32 on the CPU, outside torch.compile and autocast."""
    if is_disabled() or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return False
    for t in tensors:  # a plain loop with is_cpu and dtype identity: this runs several times per block and call
        if t is not None and (not t.is_cpu or t.dtype is not torch.float32):
            return False
    return library() is not None


def _applies(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernels can stand in for the PyTorch expression on these tensors: :func:`usable`, and no
    gradient to record (the kernels are invisible to autograd)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    return usable(*tensors)


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _threads() -> int:
    """The threads a kernel runs on: as many as PyTorch's own operators use."""
    return torch.get_num_threads()


def _partial_sums(tokens: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """Scratch for a backward kernel's sums over ``tokens`` tokens of ``width`` floats, per part of PART_ROWS."""
    return like.new_empty(-(-tokens // PART_ROWS), width)


def _contiguous(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The tensors as the kernels read them (None stays None). Bind the results to names before a call: a temporary
    passed as a pointer would be freed before the kernel runs."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _arranged_for_the_projection(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Headwise weights (E/4, 4, 4) as the forward kernels read them: wt (4, E), wt[d, 4b + o] = w[b, o, d]."""
    return [w.permute(2, 0, 1).reshape(4, -1).contiguous() for w in weights]


def _arranged_for_its_backward(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Headwise weights as the backward kernels apply them to the gradients (the transposed projection): wt_in (4, E),
    wt_in[o, 4b + d] = w[b, o, d]."""
    return [w.permute(1, 0, 2).reshape(4, -1).contiguous() for w in weights]


def _projection_grads(sums: torch.Tensor, dim: int) -> list[torch.Tensor]:
    """dL/d each headwise weight (E/4, 4, 4), then dL/d each bias (E,), from the backward kernels' sums: per
    projection dwt (4, E) with dwt[d, 4b + o] = dL/dw[b, o, d], then the bias's (E,)."""
    per_projection = sums[: 15 * dim].view(3, 5, dim)
    weight_grads = [p[:4].view(4, dim // 4, 4).permute(1, 2, 0).contiguous() for p in per_projection]
    return weight_grads + [p[4] for p in per_projection]


def headwise_qkv(
    qk_input: torch.Tensor,
    v_input: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    num_heads: int,
    gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    reuse: bool = False,
) -> tuple[torch.Tensor, ...] | None:
    """q, k (from qk_input) and v (from v_input), 4x4-block headwise projections: (B, S, E) -> (B, NH, S, DH).

    With ``gates`` = (weight for qk_input (G, E), weight for v_input (G, E), bias (G,)) also the gate
    pre-activations (B, G, S), as a fourth output. With ``reuse``, q, k and v are written into buffers that the next
    such call overwrites (:mod:`vil.kernels.scratch`).
    """
    if not _applies(qk_input, v_input, *weights, *biases, *(gates or ())):
        return None
    batch, seq_len, dim = qk_input.shape
    if not _headwise_shapes_match(qk_input, v_input, weights, num_heads):
        return None
    arranged = _arranged_for_the_projection(weights)
    qk_input, v_input, *biases = _contiguous(qk_input, v_input, *biases)
    head_dim = dim // num_heads
    shape = (batch, num_heads, seq_len, head_dim)
    if reuse:
        q, k, v = (reused(f"headwise_qkv.{name}", shape, qk_input) for name in "qkv")
    else:
        q, k, v = (qk_input.new_empty(shape) for _ in range(3))
    gate_tensors, gate_out, num_gates = [None] * 3, None, 0
    if gates is not None:
        gate_tensors = _contiguous(*gates)
        num_gates = gate_tensors[2].shape[0]
        gate_out = qk_input.new_empty(batch, num_gates, seq_len)
    library().vil_headwise_qkv(
        *map(_pointer, (qk_input, v_input, *arranged, *biases, q, k, v, *gate_tensors, gate_out)),
        num_gates, batch, seq_len, num_heads, head_dim, _threads(),
    )  # fmt: skip
    return (q, k, v) if gates is None else (q, k, v, gate_out)


def headwise_gates(
    qk_input: torch.Tensor, v_input: torch.Tensor, gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> torch.Tensor | None:
    """Only the gate pre-activations of :func:`headwise_qkv`: (B, G, S) = gate_bias + gate_wqk qk_input + gate_wv
    v_input, for :func:`mlstm_parallel_headwise`, which projects q, k, v itself."""
    if not _applies(qk_input, v_input, *gates) or v_input.shape != qk_input.shape:
        return None
    batch, seq_len, dim = qk_input.shape
    qk_input, v_input, *gate_tensors = _contiguous(qk_input, v_input, *gates)
    num_gates = gate_tensors[2].shape[0]
    if [tuple(t.shape) for t in gate_tensors] != [(num_gates, dim), (num_gates, dim), (num_gates,)]:
        return None
    gate_out = qk_input.new_empty(batch, num_gates, seq_len)
    library().vil_headwise_qkv(
        *map(_pointer, (qk_input, v_input, *[None] * 9, *gate_tensors, gate_out)),
        num_gates, batch, seq_len, 1, dim, _threads(),
    )  # fmt: skip
    return gate_out


# mlstm_parallel_headwise gives each thread whole matrices: below this many per thread the split into strips of
# mlstm_parallel balances the threads better than keeping q, k, v out of memory saves (with 4 per thread at most a
# fifth of the threads idle at the end)
HEADWISE_CELL_MATRICES_PER_THREAD = 4


def headwise_cell_has_work_for_the_threads(batch: int, num_heads: int) -> bool:
    """Whether :func:`mlstm_parallel_headwise` takes B NH matrices at the current thread count."""
    return batch * num_heads >= HEADWISE_CELL_MATRICES_PER_THREAD * _threads()


def mlstm_parallel_headwise(
    qk_input: torch.Tensor, v_input: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None],
    num_heads: int, write_log: torch.Tensor, row_max: torch.Tensor, log_m_row: torch.Tensor, eps: float,
    min_log: float,
) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """:func:`mlstm_parallel` on q, k = headwise(qk_input) and v = headwise(v_input) (as :func:`headwise_qkv` makes
    them), projected inside the kernel, matrix by matrix: they never go through memory. The same values bit for bit.
    -> h (B, NH, S, DH) and the readout's denominator (B, NH, S); None where it does not apply, or where the
    B NH matrices are too few for the threads (HEADWISE_CELL_MATRICES_PER_THREAD)."""
    tensors = (qk_input, v_input, *weights, *biases, write_log, row_max, log_m_row)
    if not _applies(*tensors) or not _headwise_shapes_match(qk_input, v_input, weights, num_heads):
        return None
    batch, seq_len, dim = qk_input.shape
    if seq_len == 0 or not headwise_cell_has_work_for_the_threads(batch, num_heads):
        return None
    arranged = _arranged_for_the_projection(weights)
    qk_input, v_input, *biases = _contiguous(qk_input, v_input, *biases)
    write_log, row_max, log_m_row = _contiguous(write_log, row_max, log_m_row)
    head_dim = dim // num_heads
    h = qk_input.new_empty(batch, num_heads, seq_len, head_dim)
    denominator = qk_input.new_empty(batch, num_heads, seq_len)
    status = library().vil_mlstm_parallel_headwise(
        *map(_pointer, (qk_input, v_input, *arranged, *biases, write_log, row_max, log_m_row, h, denominator)),
        batch, num_heads, seq_len, head_dim, eps, min_log, _threads(),
    )  # fmt: skip
    return (h, denominator) if status == 0 else None


def gated_branch_output(
    z: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    skip: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor | None,
    eps: float,
    reuse: bool = False,
) -> torch.Tensor | None:
    """(LayerNorm per head(h) * (1 + norm_weight) + norm_bias + c * skip) * silu(z): h (B, NH, S, DH), c and z
    (B, S, E) -> (B, S, E); with ``reuse`` in a buffer that the next such call overwrites."""
    if not _applies(z, h, c, skip, norm_weight, norm_bias) or not _branch_shapes_match(h, c, z):
        return None
    batch, heads, seq_len, head_dim = h.shape
    h, c, z, skip, norm_weight, norm_bias = _contiguous(h, c, z, skip, norm_weight, norm_bias)
    out = reused("gated_branch_output", c.shape, c) if reuse else torch.empty_like(c)
    library().vil_gated_branch_output(
        *map(_pointer, (h, c, z, norm_weight, norm_bias, skip, out)), batch, seq_len, heads, head_dim, eps, _threads()
    )
    return out


def gated_branch_output_backward(
    z: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    skip: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor | None,
    eps: float,
    d_out: torch.Tensor,
    reuse: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor | None]] | None:
    """The backward pass of :func:`gated_branch_output` for dL/d out ``d_out`` (B, S, E): -> its output (with
    ``reuse`` in the buffer of :func:`gated_branch_output`), and the gradients for (z, h, c, skip, norm_weight,
    norm_bias). None where the kernel does not apply."""
    if torch.is_grad_enabled() or not _applies(z, h, c, skip, norm_weight, norm_bias, d_out):
        return None
    if not _branch_shapes_match(h, c, z, d_out) or h.shape[-1] > ROW_BUFFER:
        return None
    batch, heads, seq_len, head_dim = h.shape
    h, c, z, skip, norm_weight, norm_bias, d_out = _contiguous(h, c, z, skip, norm_weight, norm_bias, d_out)
    out = reused("gated_branch_output", c.shape, c) if reuse else torch.empty_like(c)
    dz, dc, dh = torch.empty_like(z), torch.empty_like(c), torch.empty_like(h)
    d_skip, d_weight = torch.zeros_like(skip), torch.zeros_like(norm_weight)
    d_bias = None if norm_bias is None else torch.zeros_like(norm_bias)
    partial = _partial_sums(batch * seq_len, 3 * heads * head_dim, c)
    tensors = (h, c, z, norm_weight, norm_bias, skip, d_out, out, dh, dc, dz, d_weight, d_bias, d_skip, partial)
    library().vil_gated_branch_output_backward(
        *map(_pointer, tensors), PART_ROWS, batch, seq_len, heads, head_dim, eps, _threads()
    )
    return out, [dz, dh, dc, d_skip, d_weight, d_bias]


def _branch_shapes_match(h: torch.Tensor, *token_tensors: torch.Tensor) -> bool:
    """h (B, NH, S, DH) and every other tensor (B, S, NH * DH)."""
    batch, heads, seq_len, head_dim = h.shape
    return all(t.shape == (batch, seq_len, heads * head_dim) for t in token_tensors)


def _conv_shapes_match(x: torch.Tensor, grid: tuple[int, int], weight: torch.Tensor) -> bool:
    """x (B, H*W, C) on ``grid`` and a depthwise weight (C, 1, k, k) with k odd, at most MAX_CONV_KERNEL."""
    batch, num_tokens, channels = x.shape
    kernel = weight.shape[-1]
    return (
        weight.shape == (channels, 1, kernel, kernel)
        and kernel % 2 == 1
        and kernel <= MAX_CONV_KERNEL
        and num_tokens == grid[0] * grid[1]
    )


def conv2d_silu_supported(x: torch.Tensor, grid: tuple[int, int], weight: torch.Tensor, bias: torch.Tensor | None):
    """Whether :func:`conv2d_silu` and :func:`conv2d_silu_backward` can run on these tensors, gradients aside (for
    an autograd Function that calls both)."""
    return usable(x, weight, bias) and _conv_shapes_match(x, grid, weight) and x.shape[-1] <= ROW_BUFFER


def _taps_first(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise weight (C, 1, k, k) as the kernels read it: (k*k, C)."""
    return weight.reshape(weight.shape[0], -1).t().contiguous()


def conv2d_silu(x: torch.Tensor, grid: tuple[int, int], weight: torch.Tensor, bias: torch.Tensor | None):
    """silu(depthwise k x k conv with 'same' zero padding) of x (B, H*W, C) read as an image of ``grid``."""
    if not _applies(x, weight, bias) or not _conv_shapes_match(x, grid, weight):
        return None
    batch, _, channels = x.shape
    arranged, (x, bias) = _taps_first(weight), _contiguous(x, bias)
    out = torch.empty_like(x)
    library().vil_conv2d_silu(
        *map(_pointer, (x, arranged, bias, out)), batch, grid[0], grid[1], channels, weight.shape[-1], _threads()
    )
    return out


def mlstm_parallel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, write_log: torch.Tensor, row_max: torch.Tensor,
    log_m_row: torch.Tensor, eps: float, min_log: float,
) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """The parallel form of the cell in strips of rows (see cell.c): q, k (B, NH, S, DH), v (B, NH, S, DHV), the gate
    rows a, r = cummax(a) and M = b + r (B, NH, S) -> h (B, NH, S, DHV) and the readout's denominator (B, NH, S).
    None where it does not apply."""
    if not _applies(q, k, v, write_log, row_max, log_m_row) or q.numel() == 0 or v.numel() == 0:
        return None
    q, k, v, write_log, row_max, log_m_row = _contiguous(q, k, v, write_log, row_max, log_m_row)
    *lead, seq_len, head_dim = q.shape
    h, denominator = torch.empty_like(v), q.new_empty(*lead, seq_len)
    status = library().vil_mlstm_parallel(
        *map(_pointer, (q, k, v, write_log, row_max, log_m_row, h, denominator)),
        q.numel() // (seq_len * head_dim), seq_len, head_dim, v.shape[-1], eps, min_log, _threads(),
    )  # fmt: skip
    return (h, denominator) if status == 0 else None


def mlstm_parallel_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dh: torch.Tensor, h: torch.Tensor, denominator: torch.Tensor,
    log_m_row: torch.Tensor, write_log: torch.Tensor, row_max: torch.Tensor, eps: float, min_log: float,
) -> tuple[torch.Tensor, ...] | None:  # fmt: skip
    """Backward of :func:`mlstm_parallel` given dL/dh and the forward pass's h (B, NH, S, DHV) and readout
    denominator (B, NH, S): -> dq, dk, dv, the row and column sums of dL/d log decay, and dL/dM through the
    readout's floor exp(-M) (B, NH, S each), as vil.ops.common.readout_backward gives it. None where it does not
    apply."""
    tensors = (q, k, v, dh, h, denominator, log_m_row, write_log, row_max)
    if not _applies(*tensors) or q.numel() == 0 or v.numel() == 0:
        return None
    q, k, v, dh, h, denominator, log_m_row, write_log, row_max = _contiguous(*tensors)
    *lead, seq_len, head_dim = q.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    row_sum, col_sum, d_log_m_row = (q.new_empty(*lead, seq_len) for _ in range(3))
    status = library().vil_mlstm_parallel_backward(
        *map(_pointer, (q, k, v, dh, h, denominator, log_m_row, write_log, row_max, dq, dk, dv, row_sum, col_sum)),
        _pointer(d_log_m_row), q.numel() // (seq_len * head_dim), seq_len, head_dim, v.shape[-1], eps, min_log,
        _threads(),
    )  # fmt: skip
    return (dq, dk, dv, row_sum, col_sum, d_log_m_row) if status == 0 else None


def mlstm_parallel_backward_headwise(
    qk_input: torch.Tensor, v_input: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None],
    num_heads: int, dh: torch.Tensor, h: torch.Tensor, denominator: torch.Tensor, log_m_row: torch.Tensor,
    write_log: torch.Tensor, row_max: torch.Tensor, eps: float, min_log: float,
) -> tuple[torch.Tensor, ...] | None:  # fmt: skip
    """:func:`mlstm_parallel_backward` with q, k, v projected inside the kernel, per matrix, as
    :func:`mlstm_parallel_headwise` does, and their projections' backward pass too: dq, dk, dv never go through
    memory. -> the projections' part of dL/d qk_input and dL/d v_input (B, S, E; the gates' part is
    :func:`headwise_gates_backward`'s), dL/d each weight, dL/d each bias (as :func:`headwise_qkv_backward` gives
    them), then the row and column sums of dL/d log decay and dL/dM (B, NH, S each). None where it does not apply."""
    tensors = (qk_input, v_input, *weights, *biases, dh, h, denominator, log_m_row, write_log, row_max)
    if not _applies(*tensors) or not _headwise_shapes_match(qk_input, v_input, weights, num_heads):
        return None
    batch, seq_len, dim = qk_input.shape
    if seq_len == 0 or h.shape != (batch, num_heads, seq_len, dim // num_heads) or dim // num_heads > ROW_BUFFER:
        return None
    arranged, arranged_back = _arranged_for_the_projection(weights), _arranged_for_its_backward(weights)
    qk_input, v_input, *biases = _contiguous(qk_input, v_input, *biases)
    dh, h, denominator, log_m_row, write_log, row_max = _contiguous(dh, h, denominator, log_m_row, write_log, row_max)
    d_qk_input, d_v_input = torch.empty_like(qk_input), torch.empty_like(v_input)
    sums, partial = qk_input.new_zeros(15 * dim), qk_input.new_empty(batch, 15 * dim)
    row_sum, col_sum, d_log_m_row = (denominator.new_empty(denominator.shape) for _ in range(3))
    status = library().vil_mlstm_parallel_backward_headwise(
        *map(_pointer, (qk_input, v_input, *arranged, *biases, *arranged_back, dh, h, denominator, log_m_row)),
        *map(_pointer, (write_log, row_max, d_qk_input, d_v_input, sums, partial, row_sum, col_sum, d_log_m_row)),
        batch, num_heads, seq_len, dim // num_heads, eps, min_log, _threads(),
    )  # fmt: skip
    if status != 0:
        return None
    return d_qk_input, d_v_input, *_projection_grads(sums, dim), row_sum, col_sum, d_log_m_row


def mlstm_chunkwise(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate_rows: tuple[torch.Tensor, ...], alpha: torch.Tensor,
    c0: torch.Tensor, n0: torch.Tensor, chunk: int, eps: float, min_log: float,
) -> tuple[torch.Tensor, ...] | None:  # fmt: skip
    """The chunkwise form's forward pass (see cell.c): q, k (B, NH, S, DH), v (B, NH, S, DHV) unpadded; ``gate_rows``
    = (a, r, inter, log_m, write), each (B, NH, NC, L); alpha (B, NH, NC); the initial state c0 (B, NH, DH, DHV),
    n0 (B, NH, DH). -> h (B, NH, S, DHV), the denominators (B, NH, NC, L) and the final state (c, n). The states
    before each chunk go into reused buffers (:func:`mlstm_chunk_states` recomputes them for a backward pass). None
    where it does not apply."""
    tensors = (q, k, v, *gate_rows, alpha, c0, n0)
    if not _applies(*tensors) or q.numel() == 0 or v.numel() == 0:
        return None
    q, k, v, *gate_rows, alpha, c0, n0 = _contiguous(*tensors)
    batch, heads, seq_len, head_dim = q.shape
    h, denominator = torch.empty_like(v), q.new_empty(batch, heads, alpha.shape[-1], chunk)
    c_last, n_last = torch.empty_like(c0), torch.empty_like(n0)
    c_prev, n_prev = _chunk_state_buffers(k, v, alpha)
    status = library().vil_mlstm_chunkwise(
        *map(_pointer, (q, k, v, *gate_rows, alpha, c0, n0, h, denominator, c_prev, n_prev, c_last, n_last)),
        batch * heads, seq_len, chunk, head_dim, v.shape[-1], eps, min_log, _threads(),
    )  # fmt: skip
    return (h, denominator, c_last, n_last) if status == 0 else None


def mlstm_chunk_states(
    k: torch.Tensor, v: torch.Tensor, write: torch.Tensor, alpha: torch.Tensor, c0: torch.Tensor, n0: torch.Tensor,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """The states before each chunk of :func:`mlstm_chunkwise` (C (B, NH, NC, DH, DHV), n (B, NH, NC, DH)) from k,
    v, the write weights (B, NH, NC, L), alpha and the initial state alone: what its backward pass reads, in buffers
    that the next chunkwise call overwrites. None where it does not apply."""
    if not _applies(k, v, write, alpha, c0, n0) or k.numel() == 0 or v.numel() == 0:
        return None
    k, v, write, alpha, c0, n0 = _contiguous(k, v, write, alpha, c0, n0)
    batch, heads, seq_len, head_dim = k.shape
    c_prev, n_prev = _chunk_state_buffers(k, v, alpha)
    c_last, n_last = torch.empty_like(c0), torch.empty_like(n0)
    pointers = (None, k, v, None, None, None, None, write, alpha, c0, n0, None, None, c_prev, n_prev, c_last, n_last)
    status = library().vil_mlstm_chunkwise(
        *map(_pointer, pointers), batch * heads, seq_len, chunk, head_dim, v.shape[-1], 0.0, 0.0, _threads()
    )
    return (c_prev, n_prev) if status == 0 else None


def _chunk_state_buffers(k: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reused buffers for the states before each chunk, (B, NH, NC, DH, DHV) and (B, NH, NC, DH): a d x d matrix per
    chunk and head, scratch in the forward pass and read only inside the backward pass that recomputes them."""
    batch, heads, _, head_dim = k.shape
    chunks = alpha.shape[-1]
    return (
        reused("chunkwise.c_prev", (batch, heads, chunks, head_dim, v.shape[-1]), k),
        reused("chunkwise.n_prev", (batch, heads, chunks, head_dim), k),
    )


def mlstm_chunkwise_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, d_num: torch.Tensor, d_den: torch.Tensor,
    gate_rows: tuple[torch.Tensor, ...], c_prev: torch.Tensor, n_prev: torch.Tensor, min_log: float,
) -> tuple[torch.Tensor, ...] | None:  # fmt: skip
    """The chunkwise backward pass through each chunk's outputs (see cell.c): q, k (B, NH, S, DH), v (B, NH, S, DHV)
    unpadded; d_num (B, NH, NC, L, DHV) and d_den (B, NH, NC, L) the readout's gradients; ``gate_rows`` = (a, r,
    inter), each (B, NH, NC, L); the states before each chunk c_prev (B, NH, NC, DH, DHV), n_prev (B, NH, NC, DH).
    -> dq, dk, dv in chunks (B, NH, NC, L, ...), the row and column sums of dL/d log decay (B, NH, NC, L), and dL/d
    c_prev, n_prev through the chunks' outputs. None where it does not apply."""
    tensors = (q, k, v, d_num, d_den, *gate_rows, c_prev, n_prev)
    if not _applies(*tensors) or q.numel() == 0 or v.numel() == 0:
        return None
    q, k, v, d_num, d_den, *gate_rows, c_prev, n_prev = _contiguous(*tensors)
    batch, heads, chunks, chunk, value_dim = d_num.shape
    seq_len, head_dim = q.shape[-2:]
    dq, dk = (q.new_empty(batch, heads, chunks, chunk, head_dim) for _ in range(2))
    dv = torch.empty_like(d_num)
    row_sum, col_sum = torch.empty_like(d_den), torch.empty_like(d_den)
    # dL/d of the states: read only by mlstm_state_backward right after, which turns them into the chunk updates'
    # gradients in place, dead before the next block's backward pass
    dc_out, dn_out = reused("chunkwise.dc_out", c_prev.shape, c_prev), reused("chunkwise.dn_out", n_prev.shape, n_prev)
    outputs = (dq, dk, dv, row_sum, col_sum, dc_out, dn_out)
    status = library().vil_mlstm_chunkwise_backward(
        *map(_pointer, (q, k, v, d_num, d_den, *gate_rows, c_prev, n_prev, *outputs)),
        batch * heads, seq_len, chunk, head_dim, value_dim, min_log, _threads(),
    )  # fmt: skip
    return outputs if status == 0 else None


def mlstm_state_backward(
    states: tuple[torch.Tensor, ...], alpha: torch.Tensor, beta: torch.Tensor, from_a_last: torch.Tensor,
    d_states_out: tuple[torch.Tensor, torch.Tensor], dm_out: torch.Tensor, d_last: tuple[torch.Tensor | None, ...],
) -> tuple | None:  # fmt: skip
    """The chunkwise form's state recurrence backwards over the chunks (see cell.c), as
    vil.ops.chunkwise._scan_backward: ``states`` = (c_prev (B, NH, NC, DH, DHV), n_prev (B, NH, NC, DH), c_last,
    n_last); alpha, beta, from_a_last (bool), dm_out (B, NH, NC); ``d_states_out`` = dL/d (c_prev, n_prev) through
    the chunks' outputs, overwritten with the gradients of the chunk updates; ``d_last`` = dL/d of the final (c, n,
    m) or Nones. -> ((dU, du), d_a_last, d_g, (dc0, dn0, dm0)). None where it does not apply."""
    d_c, d_n = d_states_out
    tensors = (*states, alpha, beta, dm_out, d_c, d_n, *d_last)
    if not _applies(*tensors) or not all(t.is_contiguous() for t in (d_c, d_n)):
        return None
    c_prev, n_prev, c_last, n_last, alpha, beta, dm_out, *last = _contiguous(*states, alpha, beta, dm_out, *d_last)
    batch, heads, chunks, head_dim, value_dim = c_prev.shape
    d_a_last, d_g = torch.empty_like(alpha), torch.empty_like(alpha)
    dc0, dn0, dm0 = torch.empty_like(c_last), torch.empty_like(n_last), alpha.new_empty(batch, heads)
    from_a_last = from_a_last.to(alpha.dtype).contiguous()
    status = library().vil_mlstm_state_backward(
        *map(_pointer, (c_prev, n_prev, c_last, n_last, alpha, beta, from_a_last, dm_out, d_c, d_n, *last)),
        *map(_pointer, (d_a_last, d_g, dc0, dn0, dm0)), batch * heads, chunks, head_dim, value_dim, _threads(),
    )  # fmt: skip
    return ((d_c, d_n), d_a_last, d_g, (dc0, dn0, dm0)) if status == 0 else None


def _headwise_shapes_match(qk_input: torch.Tensor, v_input: torch.Tensor, weights, num_heads: int) -> bool:
    """4 x 4 blocks that tile each head: the kernels broadcast within aligned groups of four channels."""
    dim = qk_input.shape[-1]
    return (
        v_input.shape == qk_input.shape
        and all(w.shape == (dim // 4, 4, 4) for w in weights)
        and dim % num_heads == 0
        and (dim // num_heads) % 4 == 0
    )


def headwise_backward_applies(
    qk_input: torch.Tensor,
    v_input: torch.Tensor,
    weights: list[torch.Tensor],
    num_heads: int,
    gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> bool:
    """Whether :func:`headwise_qkv_backward` can run for these inputs of :func:`headwise_qkv`, with ``gates`` its
    gate weights and bias (asked before the backward pass, so that the forward values are recomputed the matching
    way)."""
    dim = qk_input.shape[-1]
    if gates is not None:
        num_gates = gates[2].shape[0]
        shapes = [(num_gates, dim), (num_gates, dim), (num_gates,)]
        if [tuple(t.shape) for t in gates] != shapes or num_gates * PART_ROWS > ROW_BUFFER:
            return False
    return (
        not torch.is_grad_enabled()
        and _applies(qk_input, v_input, *weights, *(gates or ()))
        and dim <= ROW_BUFFER
        and _headwise_shapes_match(qk_input, v_input, weights, num_heads)
    )


def headwise_qkv_backward(
    qk_input: torch.Tensor,
    v_input: torch.Tensor,
    weights: list[torch.Tensor],
    grads: list[torch.Tensor],
    gates: tuple[torch.Tensor, torch.Tensor] | None = None,
    d_gates: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Gradients of :func:`headwise_qkv` for dL/d(q, k, v) ``grads`` (B, NH, S, DH), in one pass: -> dL/d qk_input,
    dL/d v_input, dL/d each weight, dL/d each bias; with ``gates`` (its gate weights for qk_input and v_input,
    (G, E) each) and their outputs' gradient ``d_gates`` (B, G, S), also dL/d each gate weight and dL/d the gate
    bias. Only where :func:`headwise_backward_applies`."""
    if (gates is None) != (d_gates is None):
        raise ValueError("headwise_qkv_backward: gates and d_gates go together")
    d_qk_input, d_v_input = torch.empty_like(qk_input), torch.empty_like(v_input)
    sums = _headwise_backward(qk_input, v_input, weights, grads, gates, d_gates, d_qk_input, d_v_input)
    dim = qk_input.shape[-1]
    return [d_qk_input, d_v_input, *_projection_grads(sums, dim), *_gate_weight_grads(sums[15 * dim :], gates, dim)]


def headwise_gates_backward(
    qk_input: torch.Tensor,
    v_input: torch.Tensor,
    gates: tuple[torch.Tensor, torch.Tensor],
    d_gates: torch.Tensor,
    d_qk_input: torch.Tensor,
    d_v_input: torch.Tensor,
) -> list[torch.Tensor]:
    """The gates' share of :func:`headwise_qkv_backward`, after :func:`mlstm_parallel_backward_headwise` made the
    projections' share: adds d_gates^T gate_w into ``d_qk_input`` and ``d_v_input`` (contiguous, in place) and returns
    dL/d each gate weight and dL/d the gate bias. Only where :func:`headwise_backward_applies` with ``gates``."""
    sums = _headwise_backward(qk_input, v_input, None, None, gates, d_gates, d_qk_input, d_v_input)
    return _gate_weight_grads(sums, gates, qk_input.shape[-1])


def _headwise_backward(qk_input, v_input, weights, grads, gates, d_gates, d_qk_input, d_v_input) -> torch.Tensor:
    """vil_headwise_qkv_backward (block.c) -> its sums; without ``grads`` the gates' share only, added to d_qk_input
    and d_v_input."""
    batch, seq_len, dim = qk_input.shape
    num_gates = 0 if gates is None else gates[0].shape[0]
    qk_input, v_input = _contiguous(qk_input, v_input)
    if grads is None:
        heads, head_dim, grads, arranged = 1, dim, [None] * 3, [None] * 3
    else:
        heads, head_dim = grads[0].shape[1], grads[0].shape[3]
        grads, arranged = _contiguous(*grads), _arranged_for_its_backward(weights)
    gate_tensors = [None] * 3 if gates is None else _contiguous(d_gates, *gates)
    size = (0 if grads[0] is None else 15 * dim) + num_gates * (2 * dim + 1)
    sums, partial = qk_input.new_zeros(size), _partial_sums(batch * seq_len, size, qk_input)
    library().vil_headwise_qkv_backward(
        *map(_pointer, (qk_input, v_input, *grads, *arranged, *gate_tensors, d_qk_input, d_v_input, sums, partial)),
        PART_ROWS, num_gates, batch, seq_len, heads, head_dim, _threads(),
    )  # fmt: skip
    return sums


def _gate_weight_grads(sums: torch.Tensor, gates, dim: int) -> list[torch.Tensor]:
    """dL/d gate_wqk, dL/d gate_wv (G, E) and dL/d the gate bias (G,) from the backward kernel's gate sums; none
    without gates."""
    if gates is None:
        return []
    num_gates = gates[0].shape[0]
    return [*sums[:-num_gates].view(2, num_gates, dim), sums[-num_gates:]]


def conv2d_silu_backward(
    x: torch.Tensor, grid: tuple[int, int], weight: torch.Tensor, bias: torch.Tensor | None, d_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The backward pass of :func:`conv2d_silu`: dL/d x, dL/d weight (C, 1, k, k), dL/d bias, for dL/d out ``d_out``.
    Only where :func:`conv2d_silu_supported`."""
    batch, _, channels = x.shape
    kernel = weight.shape[-1]
    arranged, (x, d_out, bias) = _taps_first(weight), _contiguous(x, d_out, bias)
    d_pre, dx = torch.empty_like(x), torch.empty_like(x)
    d_weight = x.new_zeros(kernel * kernel, channels)
    d_bias = None if bias is None else torch.zeros_like(bias)
    partial = _partial_sums(batch * grid[0] * grid[1], (kernel * kernel + 1) * channels, x)
    library().vil_conv2d_silu_backward(
        *map(_pointer, (x, arranged, bias, d_out, d_pre, dx, d_weight, d_bias, partial)),
        PART_ROWS, batch, grid[0], grid[1], channels, kernel, _threads(),
    )  # fmt: skip
    return dx, d_weight.t().reshape(weight.shape), d_bias

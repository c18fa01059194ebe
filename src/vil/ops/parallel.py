"""The mLSTM cell in parallel form: materialises the S x S decay matrix, O(S^2) time and memory.

This is the form the official Vision-LSTM code computes. It is exact and, for short sequences (a 224 image
has 196 tokens), also the fastest on CPU because most of its work is large matrix products.

The stabiliser is found without the S x S matrix. With ``b[t] = sum_{r<=t} log f[r]`` and ``a[s] = i[s] - b[s]``
the log decay is ``log_d[t, s] = b[t] + a[s]``, so its row maximum is ``m[t] = b[t] + max_{s<=t} a[s]`` (a
cumulative maximum, O(S)), and the stabilised decay is ``exp(a[s] - amax[t])``.

The S x S matrices are computed in tiles of rows; tile j needs only the columns up to its last row, so the
all-zero blocks above the diagonal (almost half of the work) are never computed. The backward pass is written
by hand (:class:`_ParallelMLSTM`): it keeps only q, k, v, the gates and h and recomputes the tiles.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import kernels
from .common import (
    EPS,
    MIN_LOG_DECAY,
    decay_scores,
    decay_scores_backward,
    gate_backward,
    normalised_readout,
    readout_backward,
)

ROW_TILE = 64  # rows per tile; S = 196 gives 4 tiles of 49


def mlstm_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    eps: float = EPS,
) -> torch.Tensor:
    """Stabilised parallel mLSTM.

    Args:
        q, k: (B, NH, S, DH); v: (B, NH, S, DHV).
        igate, fgate: (B, NH, S) gate pre-activations.
    Returns:
        h: (B, NH, S, DHV).
    """
    return _ParallelMLSTM.apply(q, k, v, igate, fgate, eps)


class _Gates:
    """What the parallel form derives from the gates alone: b, a = i - b, amax = cummax(a), M = b + amax."""

    def __init__(self, igate: torch.Tensor, fgate: torch.Tensor, head_dim: int):
        self.b = F.logsigmoid(fgate).cumsum(dim=-1)  # (B, NH, S)
        self.a = igate - self.b
        self.amax, self.amax_index = self.a.cummax(dim=-1)
        self.log_m_row = self.b + self.amax  # M[t] = max_s log_d[t, s]
        self.scaled_a = self.a - 0.5 * math.log(head_dim)  # the q.k scaling, folded into the decay


def _tiles(seq_len: int) -> list[tuple[int, int]]:
    """Balanced row tiles [start, end) of at most ROW_TILE rows covering [0, seq_len)."""
    size = math.ceil(seq_len / math.ceil(seq_len / ROW_TILE))
    return [(start, min(start + size, seq_len)) for start in range(0, seq_len, size)]


class _ParallelMLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, igate, fgate, eps):
        h, saved = parallel_forward(q, k, v, igate, fgate, eps)
        ctx.save_for_backward(q, k, v, igate, fgate, *saved)
        ctx.eps = eps
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, dh):
        q, k, v, igate, fgate, *saved = ctx.saved_tensors
        return *parallel_backward(q, k, v, igate, fgate, saved, dh, ctx.eps), None


def parallel_forward(q, k, v, igate, fgate, eps: float = EPS):
    """-> h (B, NH, S, DHV), and what :func:`parallel_backward` needs besides the inputs."""
    gates = _Gates(igate, fgate, q.shape[-1])
    fused = kernels.mlstm_parallel(q, k, v, gates.scaled_a, gates.amax, gates.log_m_row, eps, MIN_LOG_DECAY)
    if fused is not None:
        h, denominator = fused
        return h, (h, denominator)
    batch, heads, seq_len, value_dim = v.shape
    h = v.new_empty(batch, heads, seq_len, value_dim)
    denominator = v.new_empty(batch, heads, seq_len)
    for start, end in _tiles(seq_len):  # rows [start, end) see columns [0, end)
        scores = q[:, :, start:end] @ k[:, :, :end].transpose(-2, -1)  # (B, NH, T, end)
        decay_scores(scores, gates.scaled_a[..., :end], gates.amax[..., start:end], denominator[..., start:end], start)
        h[:, :, start:end] = normalised_readout(
            scores @ v[:, :, :end], denominator[..., start:end], gates.log_m_row[..., start:end], eps
        )
    return h, (h, denominator)


def parallel_forward_projected(cell, igate, fgate, head_dim: int, eps: float = EPS):
    """:func:`parallel_forward` for a kernel that makes q, k and v itself: ``cell(write_log, row_max, log_m_row, eps,
    min_log)`` -> (h, denominator) or None where it does not apply. -> h and what :func:`parallel_backward` needs,
    or None."""
    gates = _Gates(igate, fgate, head_dim)
    fused = cell(gates.scaled_a, gates.amax, gates.log_m_row, eps, MIN_LOG_DECAY)
    if fused is None:
        return None
    h, denominator = fused
    return h, (h, denominator)


def parallel_backward(q, k, v, igate, fgate, saved, dh, eps: float = EPS):
    """Gradients with respect to q, k, v, igate, fgate."""
    h, denominator = saved
    gates = _Gates(igate, fgate, q.shape[-1])
    fused = kernels.mlstm_parallel_backward(
        q, k, v, dh, h, denominator, gates.log_m_row, gates.scaled_a, gates.amax, eps, MIN_LOG_DECAY
    )  # the readout's backward pass included
    if fused is not None:
        dq, dk, dv, *decay_grads = fused
    else:
        d_num, d_den, d_log_m_row = readout_backward(dh, h, denominator, gates.log_m_row, eps)
        dq, dk, dv, *decay_grads = (*_tiled_backward(q, k, v, gates, d_num, d_den), d_log_m_row)
    return dq, dk, dv, *_gate_grads(*decay_grads, gates, fgate)


def parallel_backward_projected(cell_backward, igate, fgate, head_dim: int, saved, dh, eps: float = EPS):
    """:func:`parallel_backward` for a kernel that makes q, k and v itself: ``cell_backward(dh, h, denominator,
    log_m_row, write_log, row_max, eps, min_log)`` -> its own gradients, then the row and column sums of dL/d log decay
    and dL/dM as :func:`vil.kernels.mlstm_parallel_backward` gives them; None where it does not apply. -> the kernel's
    gradients followed by dL/d igate and dL/d fgate, or None."""
    h, denominator = saved
    gates = _Gates(igate, fgate, head_dim)
    fused = cell_backward(dh, h, denominator, gates.log_m_row, gates.scaled_a, gates.amax, eps, MIN_LOG_DECAY)
    if fused is None:
        return None
    *grads, d_log_decay_rows, d_a, d_log_m_row = fused
    return *grads, *_gate_grads(d_log_decay_rows, d_a, d_log_m_row, gates, fgate)


def _gate_grads(d_log_decay_rows, d_a, d_log_m_row, gates: _Gates, fgate) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/d igate and dL/d fgate, from the gradients of the log decay's rows and columns and of M."""
    d_amax = d_log_m_row - d_log_decay_rows  # M = b + amax; the decay exp(a[s] - amax[t]) sees amax with a minus
    d_a.scatter_add_(-1, gates.amax_index, d_amax)  # amax = cummax(a)
    d_igate, d_log_f = gate_backward(d_a, d_log_m_row)
    return d_igate, d_log_f * torch.sigmoid(-fgate)


def _tiled_backward(q, k, v, gates: _Gates, d_num, d_den):
    """dq, dk, dv and the row and column sums of dL/d log decay, tile by tile with batched matrix products."""
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.zeros_like(k, memory_format=torch.contiguous_format)
    dv = torch.zeros_like(v, memory_format=torch.contiguous_format)
    d_a = gates.a.new_zeros(gates.a.shape)  # contiguous, even where the gates are strided views
    d_log_decay_rows = d_a.new_empty(d_a.shape)
    for start, end in _tiles(q.shape[2]):
        rows = slice(start, end)
        # scores = (q k^T) * decay, num = scores @ v, den = scores.sum(-1); log decay = a[s] - amax[t] - log sqrt(DH)
        scores = q[:, :, rows] @ k[:, :, :end].transpose(-2, -1)  # (B, NH, T, end), raw here
        d_scores = d_num[:, :, rows] @ v[:, :, :end].transpose(-2, -1)  # the numerator's part of dL/d scores
        # -> scores, dL/d(q k^T) in d_scores, dL/d log decay summed over columns (rows) and over rows (into d_a)
        write_log, row_max, row_sums = gates.scaled_a[..., :end], gates.amax[..., rows], d_log_decay_rows[..., rows]
        decay_scores_backward(scores, d_scores, d_den[..., rows], write_log, row_max, row_sums, d_a[..., :end], start)
        dv[:, :, :end] += scores.transpose(-2, -1) @ d_num[:, :, rows]
        dq[:, :, rows] = d_scores @ k[:, :, :end]
        dk[:, :, :end] += d_scores.transpose(-2, -1) @ q[:, :, rows]
    return dq, dk, dv, d_log_decay_rows, d_a

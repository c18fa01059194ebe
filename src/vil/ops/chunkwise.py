"""The mLSTM cell in chunkwise form: linear time and memory in the sequence length.

The sequence is cut into chunks of L tokens. Inside a chunk the cell is computed in parallel form (an L x L
matrix per chunk); between chunks a d x d matrix state carries the past. All chunks are computed at once with
batched matrix products; only the cheap elementwise recurrence of the states runs as a loop over chunks.

Cost per token and head: 2*L*d (intra-chunk) + 2*d^2 (state read and write), instead of 2*S*d for the parallel
form. The result equals the parallel form up to float rounding: every exponent is stabilised by a running
maximum, exactly as in the parallel form (DESIGN.md section 2.2).

Notation per chunk (t, s index tokens of the chunk): b[t] = sum of log f from the chunk start up to and
including t; a[s] = i[s] - b[s]; amax[t] = max_{s<=t} a[s]; the state before the chunk is (C, m_prev), with the
normaliser n stored as an extra column of C (values are augmented with a column of ones, so one matrix product
yields numerator and normaliser). With r[t] = max(m_prev, amax[t]) the parallel form's stabiliser is
M[t] = b[t] + r[t], the intra-chunk weights are exp(a[s] - r[t]) (s <= t) and the state's weight exp(m_prev - r[t]).

The backward pass is written by hand (:class:`_ChunkwiseMLSTM`): it keeps q, k, v, the gates, the chunk states
and h, and recomputes the L x L matrices, so that training memory stays linear in S with a small constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .common import EPS, gate_backward, normalised_readout, readout_backward, stabilised_decay, with_ones
from .state import MLSTMState, empty_state


def mlstm_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    chunk_size: int = 64,
    initial_state: MLSTMState | None = None,
    return_state: bool = False,
    eps: float = EPS,
) -> torch.Tensor | tuple[torch.Tensor, MLSTMState]:
    """Chunkwise mLSTM.

    Args:
        q, k: (B, NH, S, DH); v: (B, NH, S, DHV).
        igate, fgate: (B, NH, S) gate pre-activations.
        chunk_size: the largest number of tokens per chunk; any S works. The S tokens are split into
            ceil(S / chunk_size) chunks of equal length, the last one padded (exact: the scan is causal and
            padded tokens neither decay nor write the state).
        initial_state: state before the first token; None means no past (m = -inf).
        return_state: also return the state after the last token.
    Returns:
        h: (B, NH, S, DHV), and the final :class:`MLSTMState` if ``return_state``. h is laid out in memory as
        (B, S, NH, DHV) (returned as a transposed view), which is the layout the caller needs next.
    """
    state = initial_state if initial_state is not None else empty_state(q, v)
    h, c_last, n_last, m_last = _ChunkwiseMLSTM.apply(q, k, v, igate, fgate, state.c, state.n, state.m, chunk_size, eps)
    return (h, MLSTMState(c=c_last, n=n_last, m=m_last)) if return_state else h


class _Chunked:
    """The inputs cut into chunks, and the quantities every pass derives from the gates alone."""

    def __init__(self, q, k, v, igate, fgate, chunk_size: int):
        batch, heads, seq_len, head_dim = q.shape
        self.shape = (batch, heads, seq_len, head_dim, v.shape[-1])
        self.num_chunks = math.ceil(seq_len / chunk_size)
        self.chunk = math.ceil(seq_len / self.num_chunks)  # balanced chunks: as little padding as possible
        self.pad = self.num_chunks * self.chunk - seq_len
        self.scale = head_dim**-0.5

        # (B, NH, NC, L, ...) contiguous copies (batched products on strided views would copy every time);
        # k pre-scaled by 1/sqrt(DH); v with a column of ones
        self.q = self._chunks(q).contiguous()
        self.k = (
            torch.mul(self._chunks(k), self.scale, out=torch.empty_like(self.q))
            if not torch.is_grad_enabled()
            else self._chunks(k).contiguous() * self.scale
        )
        self.v = self._chunks(with_ones(v))

        log_f = F.pad(F.logsigmoid(fgate), (0, self.pad), value=0.0)  # padded tokens do not decay the state ...
        i = F.pad(igate, (0, self.pad), value=float("-inf"))  # ... and write nothing into it
        self.b = log_f.view(batch, heads, self.num_chunks, self.chunk).cumsum(dim=-1)  # (B, NH, NC, L)
        self.a = i.view_as(self.b) - self.b  # (B, NH, NC, L)
        self.amax, self.amax_index = self.a.cummax(dim=-1)  # (B, NH, NC, L)
        self.g = self.b[..., -1]  # (B, NH, NC): log forget of the whole chunk
        self.a_last = self.amax[..., -1]  # (B, NH, NC): max_s a[s] over the chunk

    def _chunks(self, x: torch.Tensor) -> torch.Tensor:
        batch, heads = x.shape[:2]
        x = F.pad(x, (0, 0, 0, self.pad)) if self.pad else x
        return x.reshape(batch, heads, self.num_chunks, self.chunk, x.shape[-1])

    def unchunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, NH, NC, L, X) -> (B, NH, S, X) without the padding."""
        batch, heads, seq_len = self.shape[:3]
        return x.reshape(batch, heads, self.num_chunks * self.chunk, x.shape[-1])[:, :, :seq_len]

    def write_weights(self) -> torch.Tensor:
        """exp(a[s] - max_s a[s]): how much token s writes into the state, stabilised per chunk. (B, NH, NC, L)"""
        return torch.exp(self.a - self.a_last.unsqueeze(-1))

    def chunk_updates(self, write_weight: torch.Tensor) -> torch.Tensor:
        """U = sum_s w[s] k[s] v[s]^T for every chunk: (B, NH, NC, DH, DHV+1)."""
        return (self.k * write_weight.unsqueeze(-1)).transpose(-2, -1) @ self.v


def _stabilisers(chunked: _Chunked, m_initial: torch.Tensor) -> torch.Tensor:
    """m before every chunk and after the last one: (B, NH, NC+1).

    m_j = g_j + max(m_{j-1}, a_last_j). With G_j = g_1 + ... + g_j this is m_j = G_j + max(m_0, max_{i<=j}
    (a_last_i - G_{i-1})): a cumulative maximum, computed in float64 so the long sums lose nothing.
    """
    g = chunked.g.double()
    cum_g = g.cumsum(dim=-1)  # G_j
    cum_g_before = cum_g - g  # G_{j-1}
    running = torch.maximum(
        (chunked.a_last.double() - cum_g_before).cummax(dim=-1).values, m_initial.double()[..., None]
    )
    m_after = cum_g + running  # (B, NH, NC)
    return torch.cat([m_initial.double()[..., None], m_after], dim=-1).to(chunked.g.dtype)


def _chunk_state_weights(m_prev: torch.Tensor, a_last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C_j = alpha_j C_{j-1} + beta_j U_j with alpha = exp(m_prev - r), beta = exp(a_last - r), r = max(both)."""
    r = torch.maximum(m_prev, a_last)
    return torch.exp(m_prev - r), torch.exp(a_last - r)  # exp(-inf) = 0: no past before the first chunk


def _forward(chunked: _Chunked, c0: torch.Tensor, m0: torch.Tensor, eps: float):
    batch, heads, seq_len, head_dim, value_dim = chunked.shape
    num_chunks = chunked.num_chunks
    m_all = _stabilisers(chunked, m0)  # (B, NH, NC+1)
    m_prev = m_all[..., :-1]
    alpha, beta = _chunk_state_weights(m_prev, chunked.a_last)  # (B, NH, NC)
    scaled_updates = chunked.chunk_updates(chunked.write_weights()).mul_(beta[..., None, None])

    # the state before each chunk (B, NH, NC, DH, DHV+1), and after the last one
    states = [c0]
    for j in range(num_chunks):
        states.append(torch.addcmul(scaled_updates[:, :, j], alpha[..., j, None, None], states[-1]))
    c_last = states.pop()
    c_prev = torch.stack(states, dim=2)

    r = torch.maximum(m_prev.unsqueeze(-1), chunked.amax)  # (B, NH, NC, L)
    scores = (chunked.q @ chunked.k.transpose(-2, -1)).mul_(stabilised_decay(chunked.a, r))  # (B, NH, NC, L, L)
    inter_weight = torch.exp(m_prev.unsqueeze(-1) - r)  # (B, NH, NC, L)
    out = (scores @ chunked.v).addcmul_(inter_weight.unsqueeze(-1), chunked.q @ c_prev)  # (B, NH, NC, L, DHV+1)
    h_chunks, denominator = normalised_readout(out, chunked.b + r, eps)  # (B, NH, NC, L, DHV), (B, NH, NC, L)
    # written in the (B, S, NH, DHV) layout and returned as a (B, NH, S, DHV) view
    h = chunked.unchunk(h_chunks).transpose(1, 2).contiguous().transpose(1, 2)
    return h, c_prev, c_last, m_all, denominator


class _ChunkwiseMLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, igate, fgate, c0, n0, m0, chunk_size, eps):
        chunked = _Chunked(q, k, v, igate, fgate, chunk_size)
        c0_aug = torch.cat([c0, n0.unsqueeze(-1)], dim=-1).to(q.dtype)  # (B, NH, DH, DHV+1)
        h, c_prev, c_last, m_all, denominator = _forward(chunked, c0_aug, m0.to(q.dtype), eps)
        value_dim = v.shape[-1]
        ctx.save_for_backward(q, k, v, igate, fgate, c_prev, m_all, denominator, h)
        ctx.chunk_size, ctx.eps = chunk_size, eps
        return h, c_last[..., :value_dim], c_last[..., value_dim], m_all[..., -1]

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dc_last, dn_last, dm_last):
        q, k, v, igate, fgate, c_prev, m_all, denominator, h = ctx.saved_tensors
        grads = _backward(q, k, v, igate, fgate, c_prev, m_all, denominator, h, dh, dc_last, dn_last, dm_last,
                          ctx.chunk_size, ctx.eps)  # fmt: skip
        return (*grads, None, None)


def _backward(q, k, v, igate, fgate, c_prev, m_all, denominator, h, dh, dc_last, dn_last, dm_last, chunk_size, eps):
    """Gradients of h and the final state with respect to q, k, v, the gates and the initial state."""
    chunked = _Chunked(q, k, v, igate, fgate, chunk_size)
    batch, heads, seq_len, head_dim, value_dim = chunked.shape
    b, a, amax = chunked.b, chunked.a, chunked.amax
    m_prev = m_all[..., :-1]  # (B, NH, NC)

    # --- recompute what the outputs were made of
    r = torch.maximum(m_prev.unsqueeze(-1), amax)  # (B, NH, NC, L)
    decay = stabilised_decay(a, r)  # (B, NH, NC, L, L)
    qk = chunked.q @ chunked.k.transpose(-2, -1)
    scores = qk * decay
    inter_weight = torch.exp(m_prev.unsqueeze(-1) - r)  # (B, NH, NC, L)

    # --- h = num / (N + eps), N = max(|den|, exp(-M)), M = b + r
    d_out, d_log_m_row = readout_backward(chunked._chunks(dh), chunked._chunks(h), denominator, b + r, eps)

    # --- out = scores @ v + inter_weight * (q @ C_prev)
    d_scores = d_out @ chunked.v.transpose(-2, -1)  # (B, NH, NC, L, L)
    dv = scores.transpose(-2, -1) @ d_out  # (B, NH, NC, L, DHV+1)
    q_state = chunked.q @ c_prev  # (B, NH, NC, L, DHV+1)
    d_inter_log = (d_out * q_state).sum(dim=-1) * inter_weight  # dL/d log(inter_weight)
    d_out_inter = d_out * inter_weight.unsqueeze(-1)
    dq = d_out_inter @ c_prev.transpose(-2, -1)  # (B, NH, NC, L, DH)
    d_c_prev_out = chunked.q.transpose(-2, -1) @ d_out_inter  # (B, NH, NC, DH, DHV+1)

    # --- scores = (q @ k^T) * decay
    d_qk = d_scores * decay
    dq += d_qk @ chunked.k
    dk = d_qk.transpose(-2, -1) @ chunked.q  # (B, NH, NC, L, DH)
    d_log_decay = d_scores.mul_(scores)  # dL/d log decay[t, s]
    da = d_log_decay.sum(dim=-2)  # (B, NH, NC, L)
    dr = -d_log_decay.sum(dim=-1) - d_inter_log + d_log_m_row  # M = b + r
    db = d_log_m_row.clone()
    dm_prev = d_inter_log.sum(dim=-1)  # (B, NH, NC)

    # r = max(m_prev, amax)
    from_amax = amax > m_prev.unsqueeze(-1)
    d_amax = dr * from_amax
    dm_prev += (dr * ~from_amax).sum(dim=-1)

    # --- the state recurrence, backwards over chunks
    write_weight = chunked.write_weights()  # (B, NH, NC, L)
    updates = chunked.chunk_updates(write_weight)  # (B, NH, NC, DH, DHV+1)
    alpha, beta = _chunk_state_weights(m_prev, chunked.a_last)
    d_updates, d_a_last, d_g, dc0, dm0 = _scan_backward(
        c_prev, updates, alpha, beta, m_prev, chunked.a_last, d_c_prev_out, dm_prev, dc_last, dn_last, dm_last
    )

    # U = (k * w)^T v with w = exp(a - a_last)
    d_kw = chunked.v @ d_updates.transpose(-2, -1)  # (B, NH, NC, L, DH)
    dv += (chunked.k * write_weight.unsqueeze(-1)) @ d_updates
    d_log_w = (d_kw * chunked.k).sum(dim=-1) * write_weight
    dk += d_kw * write_weight.unsqueeze(-1)
    da += d_log_w
    d_amax[..., -1] += d_a_last - d_log_w.sum(dim=-1)

    # amax = cummax(a): each running maximum came from one earlier a[s]
    da.scatter_add_(-1, chunked.amax_index, d_amax)
    # a = i - b;  g = b[last];  b = cumsum(log f) within each chunk;  log f = logsigmoid(f)
    db[..., -1] += d_g
    d_igate, d_log_f = gate_backward(da, db)
    d_igate = d_igate.reshape(batch, heads, -1)[..., :seq_len]
    d_fgate = d_log_f.reshape(batch, heads, -1)[..., :seq_len] * torch.sigmoid(-fgate)
    dq = chunked.unchunk(dq)
    dk = chunked.unchunk(dk) * chunked.scale
    dv = chunked.unchunk(dv[..., :value_dim])
    return dq, dk, dv, d_igate, d_fgate, dc0[..., :value_dim], dc0[..., value_dim], dm0


def _scan_backward(c_prev, updates, alpha, beta, m_prev, a_last, d_c_prev_out, dm_prev_out, dc_last, dn_last, dm_last):
    """Backward of C_j = alpha_j C_{j-1} + beta_j U_j, m_j = g_j + max(m_{j-1}, a_last_j), last chunk first."""
    num_chunks = c_prev.shape[2]
    d_c = torch.zeros_like(c_prev[:, :, 0])
    if dc_last is not None:
        d_c[..., :-1] += dc_last
    if dn_last is not None:
        d_c[..., -1] += dn_last
    d_m = torch.zeros_like(m_prev[..., 0]) if dm_last is None else dm_last.clone()
    d_updates = torch.empty_like(updates)
    d_a_last = torch.empty_like(a_last)
    d_g = torch.empty_like(a_last)
    dm_prev = torch.empty_like(m_prev)
    from_a_last = a_last > m_prev
    for j in reversed(range(num_chunks)):
        d_g[..., j] = d_m  # m_j = g_j + r_j
        d_log_alpha = (d_c * c_prev[:, :, j]).sum(dim=(-2, -1)) * alpha[..., j]
        d_log_beta = (d_c * updates[:, :, j]).sum(dim=(-2, -1)) * beta[..., j]
        d_r = d_m - d_log_alpha - d_log_beta  # alpha = exp(m_prev - r), beta = exp(a_last - r)
        d_a_last[..., j] = d_log_beta + d_r * from_a_last[..., j]
        dm_prev[..., j] = d_log_alpha + d_r * ~from_a_last[..., j] + dm_prev_out[..., j]
        d_updates[:, :, j] = d_c * beta[..., j, None, None]
        d_c = d_c * alpha[..., j, None, None] + d_c_prev_out[:, :, j]
        d_m = dm_prev[..., j]
    return d_updates, d_a_last, d_g, d_c, d_m

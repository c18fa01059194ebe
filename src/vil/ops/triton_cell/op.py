"""The chunkwise mLSTM cell with its Triton kernels, as two custom ops (forward, backward) with autograd.

The ops follow :mod:`vil.ops.chunkwise` step by step: the same gate rows and stabilisers (PyTorch, O(S) per head,
here in float64), the same readout backward through the normaliser, the same backward of the chunk state
recurrence; the products over q, k, v and the states, which are O(S L d + S d^2), and the recurrences over chunks
run in the kernels of :mod:`.kernels`. Being custom ops
(``torch.library.custom_op``) with fake implementations, they sit inside ``torch.compile`` graphs whole, and the
backward op is what AOTAutograd records for the backward graph.
"""

from __future__ import annotations

import torch

from ..chunkwise import _chunk_state_weights, _Chunked, _dot, _stabilisers, write_updates_backward
from ..common import MIN_LOG_DECAY, gate_backward, readout_backward, stabilised_exp
from . import kernels


def _chunking(seq_len: int, chunk_size: int) -> tuple[int, int]:
    """(chunks, tokens per chunk), balanced as in :class:`vil.ops.chunkwise._Chunked`."""
    num_chunks = -(-seq_len // chunk_size)
    return num_chunks, -(-seq_len // num_chunks)


def _heads(x: torch.Tensor) -> torch.Tensor:
    """(B, NH, ...) -> (B * NH, ...), contiguous, as the kernels read it."""
    return x.reshape(-1, *x.shape[2:]).contiguous()


class _GateRows:
    """The chunk rows the kernels read, in float64 from float64 gates and the stabilisers m before each chunk and
    after the last one (B, NH, NC+1): sums of log f over the sequence lose too much in float32 with strong gates."""

    def __init__(self, chunked: _Chunked, m_all: torch.Tensor):
        self.m_prev = m_all[..., :-1]  # (B, NH, NC)
        self.r = torch.maximum(self.m_prev.unsqueeze(-1), chunked.amax)  # (B, NH, NC, L): row t's M = b + r
        self.inter = stabilised_exp(self.m_prev.unsqueeze(-1) - self.r)  # weight of the state before the chunk
        self.log_m = chunked.b + self.r
        self.scaled_a = chunked.scaled_a

    def for_kernels(self) -> torch.Tensor:
        """(6, B * NH, NC, L) float32, as kernels.GATE_ROWS."""
        rows = (*_split(self.scaled_a), *_split(self.r), self.inter.float(), self.log_m.float())
        return torch.stack([_heads(x) for x in rows])


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 x -> float32 (hi, lo) with hi + lo = x to ~float64 precision; infinite x -> (x, 0)."""
    hi = x.float()
    lo = torch.where(torch.isfinite(x), x - hi.double(), 0.0).float()
    return hi, lo


def _forward(q, k, v, igate, fgate, c0, n0, m0, chunk_size: int, eps: float):
    batch, heads = q.shape[:2]
    chunked = _Chunked(q, k, v, igate.double(), fgate.double(), chunk_size)
    m_all = _stabilisers(chunked, m0)  # (B, NH, NC+1) float64
    rows = _GateRows(chunked, m_all)
    alpha, beta = _chunk_state_weights(rows.m_prev, chunked.a_last)  # (B, NH, NC)
    q_, k_, v_ = _heads(q), _heads(k), _heads(v)
    write_weight = _heads(chunked.write_weights(beta).float())
    c_prev, n_prev, c_last, n_last = kernels.chunk_states(
        k_, v_, write_weight, _heads(alpha.float()), _heads(c0), _heads(n0), chunked.chunk, True
    )
    h, denominator = kernels.chunk_outputs(
        q_, k_, v_, rows.for_kernels(), c_prev, n_prev, chunked.chunk, eps, MIN_LOG_DECAY
    )
    states = (c_prev, n_prev, c_last, n_last)
    c_prev, n_prev, c_last, n_last = (x.view(batch, heads, *x.shape[1:]) for x in states)
    h, denominator = h.view(batch, heads, *h.shape[1:]), denominator.view(batch, heads, *denominator.shape[1:])
    m_all = m_all.float()
    return h, c_last, n_last, m_all[..., -1].clone(), c_prev, n_prev, m_all, denominator


def _backward(q, k, v, igate, fgate, c_prev, n_prev, c_last, n_last, m_all, denominator, h,
              dh, dc_last, dn_last, dm_last, chunk_size: int, eps: float):  # fmt: skip
    """The gradients of :func:`_forward`'s h and final state; mirrors :func:`vil.ops.chunkwise.chunkwise_backward`
    with the kernels in place of the products through each chunk's outputs."""
    batch, heads, seq_len = q.shape[:3]
    # the gate quantities in float64 (m recomputed from the gates: the float32 copy saved lost digits), the rest float32
    chunked = _Chunked(q.float(), k.float(), v.float(), igate.double(), fgate.double(), chunk_size)
    m_all = _stabilisers(chunked, m_all[..., 0].double())
    rows = _GateRows(chunked, m_all)
    amax, m_prev = chunked.amax, rows.m_prev
    h, dh = chunked.chunks(h), chunked.chunks(dh.float())

    # h = num / (max(|den|, exp(-M)) + eps), M = b + r
    d_num, d_den, d_log_m_row = readout_backward(dh, h, denominator, rows.log_m.float(), eps)
    outputs = kernels.chunk_outputs_backward(
        _heads(q), _heads(k), _heads(v), _heads(d_num), _heads(d_den), rows.for_kernels(), _heads(c_prev),
        _heads(n_prev), MIN_LOG_DECAY,
    )  # fmt: skip
    dq, dk, dv, d_log_decay_rows, da, d_c_prev_out, d_n_prev_out = (x.view(batch, heads, *x.shape[1:]) for x in outputs)

    # the state's share of num and den, through log e (e = exp(m_prev - r)): see chunkwise_backward
    d_log_inter = _dot(dh, h) + d_den * denominator - d_log_decay_rows
    dr = d_log_m_row - d_log_decay_rows - d_log_inter
    dm_prev_out = d_log_inter.sum(dim=-1)  # (B, NH, NC)
    from_amax = amax > m_prev.unsqueeze(-1)  # r = max(m_prev, amax)
    d_amax = dr * from_amax
    dm_prev_out += (dr * ~from_amax).sum(dim=-1)

    # the state recurrence, backwards over chunks (as vil.ops.chunkwise._scan_backward, its loops in kernels)
    alpha, beta = (x.float() for x in _chunk_state_weights(m_prev, chunked.a_last))  # (B, NH, NC)
    d_c_after, d_n_after, dc0, dn0 = (
        x.view(batch, heads, *x.shape[1:])
        for x in kernels.chunk_states_backward(
            _heads(d_c_prev_out), _heads(d_n_prev_out), _heads(alpha), _heads(dc_last), _heads(dn_last)
        )
    )
    c_after = torch.cat([c_prev[:, :, 1:], c_last.unsqueeze(2)], dim=2)
    n_after = torch.cat([n_prev[:, :, 1:], n_last.unsqueeze(2)], dim=2)
    # alpha and beta are exp(m_prev - r) and exp(a_last - r); beta U = C_after - alpha C_prev
    dot_prev = _dot(d_c_after.flatten(-2), c_prev.flatten(-2)) + _dot(d_n_after, n_prev)  # (B, NH, NC)
    dot_after = _dot(d_c_after.flatten(-2), c_after.flatten(-2)) + _dot(d_n_after, n_after)
    d_log_alpha = dot_prev * alpha
    d_log_beta = dot_after - d_log_alpha
    d_updates, d_update_n = d_c_after * beta[..., None, None], d_n_after * beta[..., None]
    from_a_last = (chunked.a_last > m_prev).float()
    d_a_last, d_g, dm0 = (
        x.view(batch, heads, *x.shape[1:])
        for x in kernels.stabiliser_backward(
            *(_heads(t) for t in (d_log_alpha, d_log_beta, from_a_last, dm_prev_out)), dm_last.reshape(-1).contiguous()
        )
    )

    write_weight = chunked.write_weights().float()
    write_updates_backward(chunked, write_weight, (d_updates, d_update_n), dk, dv, da, d_amax, d_a_last)

    # amax = cummax(a); a = i - b; g = b[last]; b = cumsum(log f) within each chunk; log f = logsigmoid(f)
    da.scatter_add_(-1, chunked.amax_index, d_amax)
    db = d_log_m_row
    db[..., -1] += d_g
    d_igate, d_log_f = gate_backward(da, db)
    d_igate = d_igate.reshape(batch, heads, -1)[..., :seq_len]
    d_fgate = d_log_f.reshape(batch, heads, -1)[..., :seq_len] * torch.sigmoid(-fgate.float())
    grads = (chunked.unchunk(dq), chunked.unchunk(dk), chunked.unchunk(dv), d_igate, d_fgate)
    inputs = (q, k, v, igate, fgate)
    return *(g.to(x.dtype).contiguous() for g, x in zip(grads, inputs, strict=True)), dc0, dn0, dm0


Tensor = torch.Tensor


@torch.library.custom_op("vil::mlstm_chunkwise_triton", mutates_args=())
def mlstm_chunkwise_triton(
    q: Tensor, k: Tensor, v: Tensor, igate: Tensor, fgate: Tensor, c0: Tensor, n0: Tensor, m0: Tensor,
    chunk_size: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """-> h (B, NH, S, DHV) float32, the final c, n, m, and what the backward op needs: the states before each
    chunk (B, NH, NC, DH, DHV) and (B, NH, NC, DH), the stabilisers (B, NH, NC+1), the denominators (B, NH, NC, L).
    q, k (B, NH, S, DH), v (B, NH, S, DHV), gates (B, NH, S) in any float dtype; c0, n0, m0 float32."""
    return _forward(q, k, v, igate, fgate, c0, n0, m0, chunk_size, eps)


@mlstm_chunkwise_triton.register_fake
def _(q, k, v, igate, fgate, c0, n0, m0, chunk_size, eps):
    batch, heads, seq_len, head_dim = q.shape
    num_chunks, chunk = _chunking(seq_len, chunk_size)
    value_dim = v.shape[-1]
    return (
        q.new_empty(batch, heads, seq_len, value_dim, dtype=torch.float32),
        torch.empty_like(c0), torch.empty_like(n0), torch.empty_like(m0),
        c0.new_empty(batch, heads, num_chunks, head_dim, value_dim), n0.new_empty(batch, heads, num_chunks, head_dim),
        m0.new_empty(batch, heads, num_chunks + 1), m0.new_empty(batch, heads, num_chunks, chunk),
    )  # fmt: skip


@torch.library.custom_op("vil::mlstm_chunkwise_triton_backward", mutates_args=())
def mlstm_chunkwise_triton_backward(
    q: Tensor, k: Tensor, v: Tensor, igate: Tensor, fgate: Tensor, c_prev: Tensor, n_prev: Tensor, c_last: Tensor,
    n_last: Tensor, m_all: Tensor, denominator: Tensor, h: Tensor, dh: Tensor, dc_last: Tensor, dn_last: Tensor,
    dm_last: Tensor, chunk_size: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """-> dL/d q, k, v, igate, fgate (in their dtypes) and dL/d c0, n0, m0."""
    return _backward(q, k, v, igate, fgate, c_prev, n_prev, c_last, n_last, m_all, denominator, h,
                     dh, dc_last, dn_last, dm_last, chunk_size, eps)  # fmt: skip


@mlstm_chunkwise_triton_backward.register_fake
def _(q, k, v, igate, fgate, c_prev, n_prev, c_last, n_last, m_all, denominator, h, dh, dc_last, dn_last, dm_last,
      chunk_size, eps):  # fmt: skip
    return (*(torch.empty_like(x) for x in (q, k, v, igate, fgate, c_last, n_last)), m_all.new_empty(m_all.shape[:2]))


def _setup_context(ctx, inputs, output):
    q, k, v, igate, fgate, *_, chunk_size, eps = inputs
    h, c_last, n_last, _, c_prev, n_prev, m_all, denominator = output
    ctx.save_for_backward(q, k, v, igate, fgate, c_prev, n_prev, c_last, n_last, m_all, denominator, h)
    ctx.chunk_size, ctx.eps = chunk_size, eps


def _autograd_backward(ctx, dh, dc_last, dn_last, dm_last, *_):
    q, k, v, igate, fgate, c_prev, n_prev, c_last, n_last, m_all, denominator, h = ctx.saved_tensors
    # outputs that took no part in the loss come without a gradient
    dh, dc_last, dn_last, dm_last = (
        torch.zeros_like(x) if d is None else d for d, x in ((dh, h), (dc_last, c_last), (dn_last, n_last),
                                                             (dm_last, m_all[..., -1]))
    )  # fmt: skip
    grads = mlstm_chunkwise_triton_backward(
        q, k, v, igate, fgate, c_prev, n_prev, c_last, n_last, m_all, denominator, h,
        dh, dc_last, dn_last, dm_last, ctx.chunk_size, ctx.eps,
    )  # fmt: skip
    return *grads, None, None


mlstm_chunkwise_triton.register_autograd(_autograd_backward, setup_context=_setup_context)

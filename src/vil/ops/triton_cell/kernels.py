"""Triton kernels for the chunkwise mLSTM cell: the heavy per-chunk work, in float32 arithmetic.

Five kernels, each the Triton counterpart of a step of :mod:`vil.ops.chunkwise` (same notation, same gate rows):

- :func:`chunk_states`: the state before every chunk and after the last one, C_j = alpha_j C_{j-1} + sum_s w[s]
  k[s] v[s]^T (and n likewise), one program per (batch x head, DH tile, DHV tile) walking the chunks in order;
- :func:`chunk_outputs`: h and the denominators of every chunk, one program per (batch x head, chunk);
- :func:`chunk_outputs_backward`: dq, dk, dv through each chunk's outputs, the row and column sums of dL/d log
  decay, and dL/d of the state before each chunk through that chunk's outputs, one program per (batch x head,
  chunk);
- :func:`chunk_states_backward` and :func:`stabiliser_backward`: the two recurrences of the chunk states run
  backwards (dL/dC after each chunk; dL/dm through m_j = g_j + max(m_{j-1}, a_last_j)), where PyTorch would
  launch a few small ops per chunk (hundreds of chunks at 2048 px).

Everything the gates alone determine (stabilisers, decay rows, write weights; O(S) per head) and the elementwise
steps between the kernels stay in PyTorch, as in the chunkwise form, so that both compute the same exact gradient
(the normaliser max(|den|, exp(-M)) and the stabilisers included).

Inputs are read in their own dtype (float32, float16 or bfloat16) and converted to float32 on load; every
product accumulates in float32. With float32 inputs the products run in IEEE float32 (not TF32, whose 10-bit
mantissa would cost ~1e-3 relative); with half inputs in TF32, which holds float16 and bfloat16 inputs exactly
(intermediate operands such as the decayed scores are rounded to its 10-bit mantissa).

Shapes: q, k (BH, S, DH), v (BH, S, DHV), contiguous; gate rows (BH, NC, L); states (BH, NC, DH, DHV). A chunk
holds L <= BLOCK_L tokens (BLOCK_L a power of two >= 16); the last chunk may hold fewer real tokens: loads past S
read zeros, and padded tokens have a = -inf (they write nothing and are read by no real token).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# the rows per chunk token that the output kernels read, stacked in this order (the backward kernel reads the first
# five): the write log weights a (including log 1/sqrt(DH)) and the row stabilisers r, each as a float32 pair
# hi + lo of its float64 value, the weights e of the state before the chunk, and the stabilisers M = b + r
GATE_ROWS = ("a_hi", "a_lo", "r_hi", "r_lo", "inter", "log_m")


def head_block(size: int) -> int:
    """The tile width for a head dimension: the largest of 64, 32, 16 that divides it (sizes are multiples of 16)."""
    return next(block for block in (64, 32, 16) if size % block == 0)


def chunk_block(chunk: int) -> int:
    """The tile height for chunks of ``chunk`` tokens: a power of two, at least 16 (tl.dot's smallest)."""
    return max(16, triton.next_power_of_2(chunk))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def _chunk_states_kernel(
    k_ptr, v_ptr, w_ptr, alpha_ptr, c0_ptr, n0_ptr, c_prev_ptr, n_prev_ptr, c_last_ptr, n_last_ptr,
    seq_len, num_chunks, chunk,
    DH: tl.constexpr, DV: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_V: tl.constexpr,
    KEEP_STATES: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    bh, tile_d, tile_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = tl.arange(0, BLOCK_L)
    d = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    e = tile_v * BLOCK_V + tl.arange(0, BLOCK_V)
    c_offsets = d[:, None] * DV + e[None, :]  # (BLOCK_D, BLOCK_V) within one DH x DHV state
    c = tl.load(c0_ptr + bh * DH * DV + c_offsets)
    n = tl.load(n0_ptr + bh * DH + d)
    for j in range(num_chunks):
        if KEEP_STATES:
            tl.store(c_prev_ptr + (bh * num_chunks + j) * DH * DV + c_offsets, c)
            if tile_v == 0:
                tl.store(n_prev_ptr + (bh * num_chunks + j) * DH + d, n)
        tokens = j * chunk + rows
        real = (rows < chunk) & (tokens < seq_len)
        keys = tl.load(k_ptr + (bh * seq_len + tokens[:, None]) * DH + d[None, :], mask=real[:, None], other=0.0)
        values = tl.load(v_ptr + (bh * seq_len + tokens[:, None]) * DV + e[None, :], mask=real[:, None], other=0.0)
        weights = tl.load(w_ptr + (bh * num_chunks + j) * chunk + rows, mask=rows < chunk, other=0.0)
        weighted_keys = keys.to(tl.float32) * weights[:, None]  # (BLOCK_L, BLOCK_D)
        alpha = tl.load(alpha_ptr + bh * num_chunks + j)
        update = tl.dot(tl.trans(weighted_keys), values.to(tl.float32), input_precision=PRECISION)
        c = alpha * c + update
        n = alpha * n + tl.sum(weighted_keys, axis=0)
    tl.store(c_last_ptr + bh * DH * DV + c_offsets, c)
    if tile_v == 0:
        tl.store(n_last_ptr + bh * DH + d, n)


@triton.jit
def _decay(rows_ptr, row_stride, row_offset, rows, chunk, real_cols, MIN_LOG: tl.constexpr):
    """The chunk's stabilised decay exp(a[s] - r[t]) (s <= t, >= e^MIN_LOG, else 0) and inter-chunk weights e[t].

    a and r come as float32 pairs hi + lo (see :data:`GATE_ROWS`): a[s] - r[t] = (a_hi - r_hi) + (a_lo - r_lo) keeps
    the exponent exact to float32 rounding of the difference, however large a and r are (b sums log f over the
    sequence: with gates of -50, |b| reaches thousands, where a float32 is ~1e-4 apart from the next one)."""
    in_chunk = rows < chunk
    offsets = row_offset + rows
    cols = in_chunk & real_cols
    a_hi = tl.load(rows_ptr + offsets, mask=cols, other=float("-inf"))
    a_lo = tl.load(rows_ptr + row_stride + offsets, mask=cols, other=0.0)
    r_hi = tl.load(rows_ptr + 2 * row_stride + offsets, mask=in_chunk, other=0.0)
    r_lo = tl.load(rows_ptr + 3 * row_stride + offsets, mask=in_chunk, other=0.0)
    inter = tl.load(rows_ptr + 4 * row_stride + offsets, mask=in_chunk, other=0.0)
    log_decay = (a_hi[None, :] - r_hi[:, None]) + (a_lo[None, :] - r_lo[:, None])  # row t, column s
    keep = (rows[:, None] >= rows[None, :]) & (log_decay >= MIN_LOG)
    decay = tl.where(keep, tl.exp(tl.minimum(log_decay, 0.0)), 0.0)
    return decay, inter


@triton.jit
def _raw_scores(q_ptr, k_ptr, bh, seq_len, tokens, real, DH: tl.constexpr, BLOCK_L: tl.constexpr,
                BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """q.k of the chunk's tokens (BLOCK_L, BLOCK_L), over DH tiles; the 1/sqrt(DH) is in the decay."""
    scores = tl.zeros((BLOCK_L, BLOCK_L), dtype=tl.float32)
    for d0 in range(0, DH, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        qk_offsets = (bh * seq_len + tokens[:, None]) * DH + d[None, :]
        queries = tl.load(q_ptr + qk_offsets, mask=real[:, None], other=0.0).to(tl.float32)
        keys = tl.load(k_ptr + qk_offsets, mask=real[:, None], other=0.0).to(tl.float32)
        scores += tl.dot(queries, tl.trans(keys), input_precision=PRECISION)
    return scores


@triton.jit
def _chunk_outputs_kernel(
    q_ptr, k_ptr, v_ptr, rows_ptr, c_prev_ptr, n_prev_ptr, h_ptr, den_ptr,
    seq_len, num_chunks, chunk, eps,
    DH: tl.constexpr, DV: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_V: tl.constexpr,
    MIN_LOG: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    bh, j = tl.program_id(0), tl.program_id(1)
    rows = tl.arange(0, BLOCK_L)
    tokens = j * chunk + rows
    real = (rows < chunk) & (tokens < seq_len)
    row_offset = (bh * num_chunks + j) * chunk
    row_stride = tl.num_programs(0) * num_chunks * chunk  # between the gate rows
    state = bh * num_chunks + j

    scores = _raw_scores(q_ptr, k_ptr, bh, seq_len, tokens, real, DH, BLOCK_L, BLOCK_D, PRECISION)
    q_n = tl.zeros((BLOCK_L,), dtype=tl.float32)
    for d0 in range(0, DH, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        queries = tl.load(q_ptr + (bh * seq_len + tokens[:, None]) * DH + d[None, :], mask=real[:, None], other=0.0)
        q_n += tl.sum(queries.to(tl.float32) * tl.load(n_prev_ptr + state * DH + d)[None, :], axis=1)
    decay, inter = _decay(rows_ptr, row_stride, row_offset, rows, chunk, real, MIN_LOG)
    scores = scores * decay
    den = tl.sum(scores, axis=1) + inter * q_n
    log_m = tl.load(rows_ptr + 5 * row_stride + row_offset + rows, mask=rows < chunk, other=0.0)
    inv = 1.0 / (tl.maximum(tl.abs(den), tl.exp(-log_m)) + eps)  # exp(-M) = inf (M < -88): h = 0
    tl.store(den_ptr + row_offset + rows, den, mask=rows < chunk)

    for e0 in range(0, DV, BLOCK_V):
        e = e0 + tl.arange(0, BLOCK_V)
        values = tl.load(v_ptr + (bh * seq_len + tokens[:, None]) * DV + e[None, :], mask=real[:, None], other=0.0)
        q_c = tl.zeros((BLOCK_L, BLOCK_V), dtype=tl.float32)
        for d0 in range(0, DH, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            queries = tl.load(q_ptr + (bh * seq_len + tokens[:, None]) * DH + d[None, :], mask=real[:, None], other=0.0)
            c = tl.load(c_prev_ptr + state * DH * DV + d[:, None] * DV + e[None, :])
            q_c += tl.dot(queries.to(tl.float32), c, input_precision=PRECISION)
        num = tl.dot(scores, values.to(tl.float32), input_precision=PRECISION) + inter[:, None] * q_c
        h_offsets = (bh * seq_len + tokens[:, None]) * DV + e[None, :]
        tl.store(h_ptr + h_offsets, num * inv[:, None], mask=real[:, None])


@triton.jit
def _chunk_outputs_backward_kernel(
    q_ptr, k_ptr, v_ptr, d_num_ptr, d_den_ptr, rows_ptr, c_prev_ptr, n_prev_ptr,
    dq_ptr, dk_ptr, dv_ptr, row_sum_ptr, col_sum_ptr, dc_ptr, dn_ptr,
    seq_len, num_chunks, chunk,
    DH: tl.constexpr, DV: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_V: tl.constexpr,
    MIN_LOG: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    bh, j = tl.program_id(0), tl.program_id(1)
    rows = tl.arange(0, BLOCK_L)
    tokens = j * chunk + rows
    real = (rows < chunk) & (tokens < seq_len)
    in_chunk = rows < chunk
    row_offset = (bh * num_chunks + j) * chunk
    row_stride = tl.num_programs(0) * num_chunks * chunk  # between the gate rows
    state = bh * num_chunks + j

    # the two L x L products: the raw scores q.k and dP = d_num @ v^T
    scores = _raw_scores(q_ptr, k_ptr, bh, seq_len, tokens, real, DH, BLOCK_L, BLOCK_D, PRECISION)
    d_scores = tl.zeros((BLOCK_L, BLOCK_L), dtype=tl.float32)
    for e0 in range(0, DV, BLOCK_V):
        e = e0 + tl.arange(0, BLOCK_V)
        d_num = tl.load(d_num_ptr + (row_offset + rows[:, None]) * DV + e[None, :], mask=real[:, None], other=0.0)
        values = tl.load(v_ptr + (bh * seq_len + tokens[:, None]) * DV + e[None, :], mask=real[:, None], other=0.0)
        d_scores += tl.dot(d_num, tl.trans(values.to(tl.float32)), input_precision=PRECISION)

    # P = scores * decay; den = sum_s P: dL/d(q.k) = (dP + d_den) * decay, dL/d log decay = (dP + d_den) * P
    decay, inter = _decay(rows_ptr, row_stride, row_offset, rows, chunk, real, MIN_LOG)
    d_den = tl.load(d_den_ptr + row_offset + rows, mask=real, other=0.0)
    scores = scores * decay
    d_scores = d_scores + d_den[:, None]
    d_log_decay = d_scores * scores
    tl.store(row_sum_ptr + row_offset + rows, tl.sum(d_log_decay, axis=1), mask=in_chunk)
    tl.store(col_sum_ptr + row_offset + rows, tl.sum(d_log_decay, axis=0), mask=in_chunk)
    d_scores = d_scores * decay
    d_den_inter = d_den * inter

    for e0 in range(0, DV, BLOCK_V):  # dv = P^T @ d_num
        e = e0 + tl.arange(0, BLOCK_V)
        d_num = tl.load(d_num_ptr + (row_offset + rows[:, None]) * DV + e[None, :], mask=real[:, None], other=0.0)
        dv = tl.dot(tl.trans(scores), d_num, input_precision=PRECISION)
        tl.store(dv_ptr + (row_offset + rows[:, None]) * DV + e[None, :], dv, mask=in_chunk[:, None])

    for d0 in range(0, DH, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        qk_offsets = (bh * seq_len + tokens[:, None]) * DH + d[None, :]
        queries = tl.load(q_ptr + qk_offsets, mask=real[:, None], other=0.0).to(tl.float32)
        keys = tl.load(k_ptr + qk_offsets, mask=real[:, None], other=0.0).to(tl.float32)
        n_prev = tl.load(n_prev_ptr + state * DH + d)
        dq = tl.dot(d_scores, keys, input_precision=PRECISION) + d_den_inter[:, None] * n_prev[None, :]
        for e0 in range(0, DV, BLOCK_V):  # the state read e * (q @ C): dq += (e d_num) C^T, dC = q^T (e d_num)
            e = e0 + tl.arange(0, BLOCK_V)
            d_num = tl.load(d_num_ptr + (row_offset + rows[:, None]) * DV + e[None, :], mask=real[:, None], other=0.0)
            d_num_inter = d_num * inter[:, None]
            c_offsets = state * DH * DV + d[:, None] * DV + e[None, :]
            c = tl.load(c_prev_ptr + c_offsets)
            dq += tl.dot(d_num_inter, tl.trans(c), input_precision=PRECISION)
            tl.store(dc_ptr + c_offsets, tl.dot(tl.trans(queries), d_num_inter, input_precision=PRECISION))
        dk = tl.dot(tl.trans(d_scores), queries, input_precision=PRECISION)
        out_offsets = (row_offset + rows[:, None]) * DH + d[None, :]
        tl.store(dq_ptr + out_offsets, dq, mask=in_chunk[:, None])
        tl.store(dk_ptr + out_offsets, dk, mask=in_chunk[:, None])
        tl.store(dn_ptr + state * DH + d, tl.sum(queries * d_den_inter[:, None], axis=0))


@triton.jit
def _chunk_states_backward_kernel(
    dc_out_ptr, dn_out_ptr, alpha_ptr, dc_last_ptr, dn_last_ptr, dc_after_ptr, dn_after_ptr, dc0_ptr, dn0_ptr,
    num_chunks, DH: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    bh, tile_d, tile_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    d = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    e = tile_v * BLOCK_V + tl.arange(0, BLOCK_V)
    c_offsets = d[:, None] * DV + e[None, :]
    dc = tl.load(dc_last_ptr + bh * DH * DV + c_offsets)
    dn = tl.load(dn_last_ptr + bh * DH + d)
    # C_j = alpha_j C_{j-1} + ...: dL/dC_{j-1} = (through chunk j's outputs) + alpha_j dL/dC_j
    for step in range(num_chunks):
        j = num_chunks - 1 - step
        state = bh * num_chunks + j
        tl.store(dc_after_ptr + state * DH * DV + c_offsets, dc)
        alpha = tl.load(alpha_ptr + state)
        dc = tl.load(dc_out_ptr + state * DH * DV + c_offsets) + alpha * dc
        if tile_v == 0:
            tl.store(dn_after_ptr + state * DH + d, dn)
            dn = tl.load(dn_out_ptr + state * DH + d) + alpha * dn
    tl.store(dc0_ptr + bh * DH * DV + c_offsets, dc)
    if tile_v == 0:
        tl.store(dn0_ptr + bh * DH + d, dn)


@triton.jit
def _stabiliser_backward_kernel(
    d_log_alpha_ptr, d_log_beta_ptr, from_a_last_ptr, dm_prev_out_ptr, dm_last_ptr, d_a_last_ptr, d_g_ptr, dm0_ptr,
    heads, num_chunks, BLOCK: tl.constexpr,
):  # fmt: skip
    lanes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # one (batch, head) per lane
    valid = lanes < heads
    d_m = tl.load(dm_last_ptr + lanes, mask=valid, other=0.0)
    for step in range(num_chunks):  # m_j = g_j + r_j, r_j = max(m_{j-1}, a_last_j); alpha, beta = exp(.. - r_j)
        offsets = lanes * num_chunks + num_chunks - 1 - step
        d_log_alpha = tl.load(d_log_alpha_ptr + offsets, mask=valid, other=0.0)
        d_log_beta = tl.load(d_log_beta_ptr + offsets, mask=valid, other=0.0)
        from_a_last = tl.load(from_a_last_ptr + offsets, mask=valid, other=0.0)
        tl.store(d_g_ptr + offsets, d_m, mask=valid)
        d_r = d_m - d_log_alpha - d_log_beta
        tl.store(d_a_last_ptr + offsets, d_log_beta + d_r * from_a_last, mask=valid)
        d_m = d_log_alpha + d_r * (1.0 - from_a_last) + tl.load(dm_prev_out_ptr + offsets, mask=valid, other=0.0)
    tl.store(dm0_ptr + lanes, d_m, mask=valid)


def chunk_states(k, v, write_weight, alpha, c0, n0, chunk: int, keep_states: bool):
    """-> c_prev (BH, NC, DH, DHV), n_prev (BH, NC, DH) (None unless ``keep_states``), c_last, n_last.

    k (BH, S, DH), v (BH, S, DHV), write_weight (BH, NC, L) (beta folded in), alpha (BH, NC), c0, n0 float32."""
    heads, seq_len, head_dim = k.shape
    value_dim, num_chunks = v.shape[-1], alpha.shape[-1]
    c_last, n_last = torch.empty_like(c0), torch.empty_like(n0)
    c_prev = c0.new_empty(heads, num_chunks, head_dim, value_dim) if keep_states else c_last
    n_prev = n0.new_empty(heads, num_chunks, head_dim) if keep_states else n_last
    block_d, block_v = head_block(head_dim), head_block(value_dim)
    grid = (heads, head_dim // block_d, value_dim // block_v)
    _chunk_states_kernel[grid](
        k, v, write_weight, alpha, c0, n0, c_prev, n_prev, c_last, n_last, seq_len, num_chunks, chunk,
        DH=head_dim, DV=value_dim, BLOCK_L=chunk_block(chunk), BLOCK_D=block_d, BLOCK_V=block_v,
        KEEP_STATES=keep_states, PRECISION=_precision(k.dtype),
    )  # fmt: skip
    return (c_prev, n_prev, c_last, n_last) if keep_states else (None, None, c_last, n_last)


def chunk_outputs(q, k, v, gate_rows, c_prev, n_prev, chunk: int, eps: float, min_log: float):
    """-> h (BH, S, DHV) float32 and the denominators (BH, NC, L); ``gate_rows`` (6, BH, NC, L) as :data:`GATE_ROWS`."""
    heads, seq_len, head_dim = q.shape
    value_dim, num_chunks = v.shape[-1], c_prev.shape[1]
    h = q.new_empty(heads, seq_len, value_dim, dtype=torch.float32)
    denominator = gate_rows.new_empty(heads, num_chunks, chunk)
    _chunk_outputs_kernel[(heads, num_chunks)](
        q, k, v, gate_rows, c_prev, n_prev, h, denominator, seq_len, num_chunks, chunk, eps,
        DH=head_dim, DV=value_dim, BLOCK_L=chunk_block(chunk), BLOCK_D=head_block(head_dim),
        BLOCK_V=head_block(value_dim), MIN_LOG=min_log, PRECISION=_precision(q.dtype),
    )  # fmt: skip
    return h, denominator


def chunk_outputs_backward(q, k, v, d_num, d_den, gate_rows, c_prev, n_prev, min_log: float):
    """-> dq, dk (BH, NC, L, DH), dv (BH, NC, L, DHV), the row and column sums of dL/d log decay (BH, NC, L), and
    dL/d c_prev, n_prev through the chunks' outputs, all float32; d_num (BH, NC, L, DHV), d_den (BH, NC, L) float32,
    ``gate_rows`` (5 or 6, BH, NC, L) as :data:`GATE_ROWS`."""
    heads, seq_len, head_dim = q.shape
    num_chunks, chunk, value_dim = d_num.shape[1:]
    dq, dk = (d_num.new_empty(heads, num_chunks, chunk, head_dim) for _ in range(2))
    dv = torch.empty_like(d_num)
    row_sum, col_sum = torch.empty_like(d_den), torch.empty_like(d_den)
    dc, dn = torch.empty_like(c_prev), torch.empty_like(n_prev)
    _chunk_outputs_backward_kernel[(heads, num_chunks)](
        q, k, v, d_num, d_den, gate_rows, c_prev, n_prev, dq, dk, dv, row_sum, col_sum, dc, dn,
        seq_len, num_chunks, chunk,
        DH=head_dim, DV=value_dim, BLOCK_L=chunk_block(chunk), BLOCK_D=head_block(head_dim),
        BLOCK_V=head_block(value_dim), MIN_LOG=min_log, PRECISION=_precision(q.dtype),
    )  # fmt: skip
    return dq, dk, dv, row_sum, col_sum, dc, dn


def chunk_states_backward(dc_out, dn_out, alpha, dc_last, dn_last):
    """dL/d of the state after each chunk (BH, NC, DH, DHV), (BH, NC, DH) and of the initial state, from dL/d of
    the state before each chunk through that chunk's outputs (dc_out, dn_out), alpha (BH, NC) and dL/d of the final
    state (dc_last, dn_last); all float32."""
    heads, num_chunks, head_dim, value_dim = dc_out.shape
    dc_after, dn_after = torch.empty_like(dc_out), torch.empty_like(dn_out)
    dc0, dn0 = torch.empty_like(dc_last), torch.empty_like(dn_last)
    block_d, block_v = head_block(head_dim), head_block(value_dim)
    _chunk_states_backward_kernel[(heads, head_dim // block_d, value_dim // block_v)](
        dc_out, dn_out, alpha, dc_last, dn_last, dc_after, dn_after, dc0, dn0, num_chunks,
        DH=head_dim, DV=value_dim, BLOCK_D=block_d, BLOCK_V=block_v,
    )  # fmt: skip
    return dc_after, dn_after, dc0, dn0


def stabiliser_backward(d_log_alpha, d_log_beta, from_a_last, dm_prev_out, dm_last):
    """-> dL/d a_last, dL/dg (BH, NC) and dL/dm of the initial state (BH,), for the chunk weights' gradients
    d_log_alpha, d_log_beta, the choice from_a_last (a_last_j > m_{j-1}, as float), dL/dm before each chunk through
    its outputs (all (BH, NC) float32) and dL/dm of the final state (BH,)."""
    heads, num_chunks = d_log_alpha.shape
    d_a_last, d_g, dm0 = torch.empty_like(d_log_alpha), torch.empty_like(d_log_alpha), torch.empty_like(dm_last)
    block = 128
    _stabiliser_backward_kernel[(triton.cdiv(heads, block),)](
        d_log_alpha, d_log_beta, from_a_last, dm_prev_out, dm_last, d_a_last, d_g, dm0, heads, num_chunks, BLOCK=block
    )
    return d_a_last, d_g, dm0

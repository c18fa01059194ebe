"""The mLSTM cell in chunkwise form: linear time and memory in the sequence length.

The sequence is cut into chunks of L tokens. Inside a chunk the cell is computed in parallel form (an L x L
matrix per chunk); between chunks a d x d matrix state carries the past. All chunks are computed at once with
batched matrix products; only the cheap elementwise recurrence of the states runs as a loop over chunks.

Cost per token and head: 2*L*d (intra-chunk) + 2*d^2 (state read and write), instead of 2*S*d for the parallel
form. The result equals the parallel form up to float rounding: every exponent is stabilised by a running
maximum, exactly as in the parallel form (DESIGN.md section 2.2).

Normaliser trick: values are augmented with a column of ones, so one matrix product yields both the numerator
(the first DHV columns) and the normaliser (the last column), for the chunk part and for the state part alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .mlstm_parallel import EPS
from .mlstm_state import MLSTMState, empty_state


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
        chunk_size: tokens per chunk; any S works (the last chunk is padded, which is exact because the scan is
            causal and padded tokens neither decay nor write the state).
        initial_state: state before the first token; None means no past (m = -inf).
        return_state: also return the state after the last token.
    Returns:
        h: (B, NH, S, DHV), and the final :class:`MLSTMState` if ``return_state``.
    """
    batch, heads, seq_len, head_dim = q.shape
    value_dim = v.shape[-1]
    chunk = min(chunk_size, seq_len)
    num_chunks = math.ceil(seq_len / chunk)
    pad = num_chunks * chunk - seq_len

    log_f = F.logsigmoid(fgate)  # (B, NH, S)
    k = k * head_dim**-0.5
    v = torch.cat([v, v.new_ones(batch, heads, seq_len, 1)], dim=-1)  # (B, NH, S, DHV+1)
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        log_f = F.pad(log_f, (0, pad), value=0.0)  # padded tokens do not decay the state ...
        igate = F.pad(igate, (0, pad), value=float("-inf"))  # ... and write nothing into it

    # (B, NH, NC, L, ...) views: chunk j holds tokens [j*L, (j+1)*L)
    q, k, v = (x.reshape(batch, heads, num_chunks, chunk, -1) for x in (q, k, v))
    log_f = log_f.reshape(batch, heads, num_chunks, chunk)
    igate = igate.reshape(batch, heads, num_chunks, chunk)

    b = log_f.cumsum(dim=-1)  # (B, NH, NC, L): log forget from the chunk start up to and including t
    g = b[..., -1]  # (B, NH, NC): log forget of the whole chunk

    # What each chunk writes into the state, with a chunk-local stabiliser m_local.
    write_log = g.unsqueeze(-1) - b + igate  # (B, NH, NC, L): a[s] = g - b[s] + i[s]
    m_local = write_log.amax(dim=-1)  # (B, NH, NC)
    write_weight = torch.exp(write_log - m_local.unsqueeze(-1))  # (B, NH, NC, L)
    chunk_update = (k * write_weight.unsqueeze(-1)).transpose(-2, -1) @ v  # (B, NH, NC, DH, DHV+1)

    state = initial_state if initial_state is not None else empty_state(q, v[..., :value_dim])
    c_prev, m_prev, c_last, m_last = _scan_chunk_states(state, g, m_local, chunk_update)

    # Intra-chunk log decay: intra[t, s] = b[t] - b[s] + i[s] for s <= t.
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    intra_log = (b.unsqueeze(-1) - b.unsqueeze(-2) + igate.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
    inter_log = b + m_prev.unsqueeze(-1)  # (B, NH, NC, L): weight of the state carried in from earlier chunks
    m_row = torch.maximum(inter_log, intra_log.amax(dim=-1))  # (B, NH, NC, L) == the parallel form's m[t]

    scores = (q @ k.transpose(-2, -1)) * torch.exp(intra_log - m_row.unsqueeze(-1))  # (B, NH, NC, L, L)
    out = scores @ v + torch.exp(inter_log - m_row).unsqueeze(-1) * (q @ c_prev)  # (B, NH, NC, L, DHV+1)
    numerator, normalizer = out[..., :value_dim], out[..., value_dim:]
    h = numerator / (torch.maximum(normalizer.abs(), torch.exp(-m_row).unsqueeze(-1)) + eps)
    h = h.reshape(batch, heads, num_chunks * chunk, value_dim)[:, :, :seq_len]  # (B, NH, S, DHV)
    if not return_state:
        return h
    return h, MLSTMState(c=c_last[..., :value_dim], n=c_last[..., value_dim], m=m_last)


def _scan_chunk_states(
    state: MLSTMState, g: torch.Tensor, m_local: torch.Tensor, chunk_update: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the state recurrence over chunks.

    m_j = max(g_j + m_{j-1}, m_local_j);  C_j = exp(g_j + m_{j-1} - m_j) C_{j-1} + exp(m_local_j - m_j) U_j.

    Args:
        state: state before the first chunk.
        g, m_local: (B, NH, NC); chunk_update U: (B, NH, NC, DH, DHV+1) (normaliser in the last column).
    Returns:
        c_prev (B, NH, NC, DH, DHV+1) and m_prev (B, NH, NC): the state *before* each chunk;
        c_last, m_last: the state after the last chunk.
    """
    c = torch.cat([state.c, state.n.unsqueeze(-1)], dim=-1)  # (B, NH, DH, DHV+1)
    m = state.m  # (B, NH)
    c_before, m_before = [], []
    for j in range(g.shape[-1]):
        c_before.append(c)
        m_before.append(m)
        m_new = torch.maximum(g[..., j] + m, m_local[..., j])
        decay = torch.exp(g[..., j] + m - m_new)[..., None, None]  # exp(-inf) = 0 when there is no past yet
        scale = torch.exp(m_local[..., j] - m_new)[..., None, None]
        c = decay * c + scale * chunk_update[:, :, j]
        m = m_new
    return torch.stack(c_before, dim=2), torch.stack(m_before, dim=2), c, m

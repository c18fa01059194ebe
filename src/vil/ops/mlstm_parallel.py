"""The mLSTM cell in parallel form: materialises the S x S decay matrix, O(S^2) time and memory.

This is the form the official Vision-LSTM code computes. It is exact and, for short sequences (a 224 image
has 196 tokens), also fast on CPU because most of its work is two large matrix products.

The stabiliser is found without the S x S matrix. With ``cum[t] = sum_{r<=t} log f[r]`` and
``a[s] = i[s] - cum[s]`` the log decay is ``log_d[t, s] = cum[t] + a[s]``, so its row maximum is
``m[t] = cum[t] + max_{s<=t} a[s]`` (a cumulative maximum, O(S)), and the stabilised decay is
``exp(log_d[t, s] - m[t]) = exp(a[s] - amax[t])``: one broadcast subtraction and one exp per entry.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-6
MIN_LOG_DECAY = -80.0  # exp(-80) = 1.8e-35: still a normal float32
ROW_TILE = 64  # rows per tile; S = 196 gives 4 tiles of 49


def mlstm_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    eps: float = EPS,
    row_tile: int = ROW_TILE,
) -> torch.Tensor:
    """Stabilised parallel mLSTM.

    The S x S matrices are computed in tiles of ``row_tile`` rows; tile j needs only the columns up to its last
    row, so the all-zero blocks above the diagonal (almost half of the work) are never computed. The result does
    not depend on the tiling.

    Args:
        q, k: (B, NH, S, DH); v: (B, NH, S, DHV).
        igate, fgate: (B, NH, S) gate pre-activations.
    Returns:
        h: (B, NH, S, DHV).
    """
    seq_len, head_dim = q.shape[-2:]
    cum_log_f = F.logsigmoid(fgate).cumsum(dim=-1)  # (B, NH, S)
    write_log = igate - cum_log_f  # (B, NH, S): a[s]
    write_log_max = write_log.cummax(dim=-1).values  # (B, NH, S): amax[t] = max_{s<=t} a[s]
    max_log_d = cum_log_f + write_log_max  # (B, NH, S): the stabiliser m[t] = max_s log_d[t, s]
    k = k * head_dim**-0.5
    v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # (B, NH, S, DHV+1): ones give the normaliser

    num_tiles = math.ceil(seq_len / row_tile)
    tile = math.ceil(seq_len / num_tiles)
    outputs = []
    for start in range(0, seq_len, tile):
        end = min(start + tile, seq_len)  # rows [start, end) see columns [0, end)
        decay = stabilised_decay(write_log[..., :end], write_log_max[..., start:end], offset=start)  # (.., T, end)
        scores = q[..., start:end, :] @ k[..., :end, :].transpose(-2, -1)  # (B, NH, T, end)
        scores = scores.mul_(decay) if not torch.is_grad_enabled() else scores * decay
        outputs.append(normalised_readout(scores, v[..., :end, :], max_log_d[..., start:end], eps))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)  # (B, NH, S, DHV)


def stabilised_decay(write_log: torch.Tensor, write_log_max: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """exp(a[s] - amax[t]) for s <= t, exactly 0 for s > t: a (..., S') and amax (..., T) -> (..., T, S').

    Row r is token t = offset + r. For s <= t the exponent is <= 0 by construction. It is floored at
    MIN_LOG_DECAY: exp of very negative numbers (denormal results) runs ~7x slower on CPU, and a weight below
    e^-80 next to the row's largest weight, 1, is far below float rounding. For s > t the exponent is clamped
    to 0 (it could overflow) and the weight then zeroed.
    """
    log_decay = write_log.unsqueeze(-2) - write_log_max.unsqueeze(-1)  # (..., T, S')
    decay = log_decay.clamp_(min=MIN_LOG_DECAY, max=0.0).exp_()
    return decay.tril(offset) if torch.is_grad_enabled() else decay.tril_(offset)


def normalised_readout(scores: torch.Tensor, v_ones: torch.Tensor, max_log_d: torch.Tensor, eps: float):
    """h[t] = sum_s C[t, s] v[s] / (max(|sum_s C[t, s]|, exp(-m[t])) + eps).

    scores C: (..., T, S'); v_ones: (..., S', DHV+1), v with a column of ones appended, so that the row sums
    come out of the same matrix product as the numerator; max_log_d m: (..., T) -> h: (..., T, DHV).
    """
    out = scores @ v_ones  # (..., T, DHV+1)
    normalizer = torch.maximum(out[..., -1:].abs(), torch.exp(-max_log_d).unsqueeze(-1))  # (..., T, 1)
    return out[..., :-1] / (normalizer + eps)

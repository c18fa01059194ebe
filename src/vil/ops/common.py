"""Pieces shared by the parallel and the chunkwise forms, forward and backward.

Both forms write the log decay of token s seen from token t as ``b[t] + a[s]`` with b a cumulative sum of
log forget gates and ``a[s] = i[s] - b[s]``; the stabiliser of row t is ``M[t] = b[t] + r[t]`` where r[t] is the
largest ``a`` the row sees. The output is read out as h = num / (max(|den|, exp(-M)) + eps).
"""

from __future__ import annotations

import math

import torch

EPS = 1e-6
MIN_LOG_DECAY = -80.0  # exp(-80) = 1.8e-35: still a normal float32


def stabilised_exp(log_weight: torch.Tensor) -> torch.Tensor:
    """exp of stabilised log weights (<= 0), with those below MIN_LOG_DECAY flushed to 0.

    Next to the weight 1 that stabilisation guarantees, a weight below e^-80 is far below float rounding; left in,
    such weights become denormal floats (below 1.2e-38 in float32), and every product that touches them then runs
    ~50x slower on CPU (measured: about a fifth of ViL-T's inference time at 1024 px).
    """
    return torch.where(log_weight < MIN_LOG_DECAY, 0.0, torch.exp(log_weight))


def stabilised_decay(write_log: torch.Tensor, row_max: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """exp(a[s] - r[t]) for s <= t, exactly 0 for s > t: a (..., S') and r (..., T) -> (..., T, S').

    Row j is token t = offset + j. For s <= t the exponent is <= 0 because r[t] >= a[s]. It is floored at
    MIN_LOG_DECAY: exp of very negative numbers (denormal results) runs ~7x slower on CPU, and a weight below
    e^-80 next to the row's largest weight, 1, is far below float rounding. For s > t the exponent is clamped
    to 0 (it could overflow) and the weight then zeroed.
    """
    log_decay = write_log.unsqueeze(-2) - row_max.unsqueeze(-1)  # (..., T, S')
    decay = log_decay.clamp_(min=MIN_LOG_DECAY, max=0.0).exp_()
    return decay.tril(offset) if torch.is_grad_enabled() else decay.tril_(offset)


def decay_scores(scores: torch.Tensor, write_log, row_max, row_sum: torch.Tensor, offset: int = 0) -> None:
    """In place: scores (..., T, S') *= stabilised_decay(write_log, row_max, offset), and row_sum (..., T) = the
    new rows' sums (the PyTorch path; the CPU kernels of vil.kernels apply the decay inside their strips)."""
    scores.mul_(stabilised_decay(write_log, row_max, offset))
    row_sum.copy_(scores.sum(dim=-1))


def decay_scores_backward(qk, d_scores, d_den, write_log, row_max, row_sum, col_sum, offset: int = 0) -> None:
    """In place, the backward pass of :func:`decay_scores` and of the row sums, for raw q.k scores qk and raw
    dL/dP d_scores (..., T, S'): qk becomes P = qk * decay, d_scores becomes dL/d(qk) = (d_scores + d_den) * decay,
    row_sum (..., T) is set to and col_sum (..., S') increased by the row and column sums of dL/d log decay =
    (d_scores + d_den) * P."""
    decay = stabilised_decay(write_log, row_max, offset)
    qk.mul_(decay)
    d_log_decay = d_scores.add_(d_den.unsqueeze(-1)) * qk
    d_scores.mul_(decay)
    row_sum.copy_(d_log_decay.sum(dim=-1))
    col_sum += d_log_decay.sum(dim=-2)


def normalised_readout(
    numerator: torch.Tensor, denominator: torch.Tensor, log_m_row: torch.Tensor, eps: float
) -> torch.Tensor:
    """h = num / (max(|den|, exp(-M)) + eps): numerator (..., T, DHV), denominator and M (..., T) -> (..., T, DHV)."""
    normalizer = torch.maximum(denominator.abs(), torch.exp(-log_m_row))
    return numerator * normalizer.add_(eps).reciprocal_().unsqueeze(-1)  # a division per row, not per element


def readout_backward(
    dh: torch.Tensor, h: torch.Tensor, denominator: torch.Tensor, log_m_row: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`normalised_readout`: -> dL/d numerator, dL/d denominator, and dL/dM through exp(-M)."""
    floor = torch.exp(-log_m_row)  # inf in float32 for M < -88 (gates of -50 and below): then h = 0
    on_floor = floor > denominator.abs()
    inv = 1.0 / (torch.maximum(denominator.abs(), floor) + eps)
    dh_h = (dh * h).sum(dim=-1)
    d_denominator = -dh_h * inv * denominator.sign() * ~on_floor
    # dL/dM = (dh.h) floor / (floor + eps) on the floor, the ratio written as 1 / (1 + eps e^M): finite if floor = inf
    floor_share = torch.sigmoid(-(log_m_row + math.log(eps))) if eps > 0 else torch.ones_like(log_m_row)
    return dh * inv.unsqueeze(-1), d_denominator, dh_h * floor_share * on_floor


def gate_backward(d_a: torch.Tensor, d_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/da and the direct dL/db -> (dL/di, dL/dlog f), for a = i - b and b = cumsum(log f) along the last dim."""
    d_b = d_b - d_a
    return d_a, d_b.flip(-1).cumsum(dim=-1).flip(-1)

"""The mLSTM cell in recurrent form: one token at a time, O(d^2) state.

``mlstm_recurrent_step`` is the streaming interface (feed tokens as they arrive); ``mlstm_recurrent`` runs it
over a whole sequence. It is the slowest form on a CPU (a Python loop over tokens) and serves as the reference
the other two forms are checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import EPS
from .state import MLSTMState, empty_state


def mlstm_recurrent_step(
    state: MLSTMState,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    eps: float = EPS,
) -> tuple[torch.Tensor, MLSTMState]:
    """One token.

    Args:
        state: the state after the previous token (:func:`vil.ops.empty_state` before the first).
        q, k: (B, NH, DH); v: (B, NH, DHV); igate, fgate: (B, NH).
    Returns:
        h: (B, NH, DHV) and the new state.
    """
    log_f = F.logsigmoid(fgate)  # (B, NH)
    m = torch.maximum(log_f + state.m, igate)  # (B, NH)
    decay = torch.exp(log_f + state.m - m)  # (B, NH); 0 when there is no past (state.m = -inf)
    write = torch.exp(igate - m)  # (B, NH)
    k = k * k.shape[-1] ** -0.5
    c = decay[..., None, None] * state.c + write[..., None, None] * (k.unsqueeze(-1) * v.unsqueeze(-2))
    n = decay[..., None] * state.n + write[..., None] * k  # (B, NH, DH)
    numerator = (q.unsqueeze(-2) @ c).squeeze(-2)  # (B, NH, DHV)
    normalizer = torch.maximum((q * n).sum(dim=-1).abs(), torch.exp(-m))  # (B, NH)
    h = numerator / (normalizer.unsqueeze(-1) + eps)
    return h, MLSTMState(c=c, n=n, m=m)


def mlstm_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    initial_state: MLSTMState | None = None,
    return_state: bool = False,
    eps: float = EPS,
) -> torch.Tensor | tuple[torch.Tensor, MLSTMState]:
    """Recurrent mLSTM over a sequence: q, k: (B, NH, S, DH); v: (B, NH, S, DHV); gates: (B, NH, S)."""
    state = initial_state if initial_state is not None else empty_state(q, v)
    outputs = []
    for t in range(q.shape[2]):
        h, state = mlstm_recurrent_step(
            state, q[:, :, t], k[:, :, t], v[:, :, t], igate[:, :, t], fgate[:, :, t], eps=eps
        )
        outputs.append(h)
    h = torch.stack(outputs, dim=2)  # (B, NH, S, DHV)
    return (h, state) if return_state else h

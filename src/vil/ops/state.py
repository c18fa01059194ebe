"""The recurrent state of the mLSTM cell, shared by the chunkwise and recurrent forms."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MLSTMState(NamedTuple):
    """State after some prefix of the sequence, stabilised by ``m``.

    The true (unstabilised) memory is ``c * exp(m)`` and the true normaliser ``n * exp(m)``. Before the first token
    there is no state at all: ``c = 0``, ``n = 0``, ``m = -inf`` (see :func:`empty_state`). Keys are scaled by
    1/sqrt(DH) before they are written (mlstm_kernels scales q instead: its c and n are sqrt(DH) times ours).

    c: (B, NH, DH, DHV) matrix memory; n: (B, NH, DH) normaliser; m: (B, NH) log-scale stabiliser.
    """

    c: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def empty_state(q: torch.Tensor, v: torch.Tensor) -> MLSTMState:
    """The state before the first token, for q: (B, NH, ..., DH) and v: (B, NH, ..., DHV)."""
    batch, heads, head_dim, value_dim = q.shape[0], q.shape[1], q.shape[-1], v.shape[-1]
    return MLSTMState(
        c=q.new_zeros(batch, heads, head_dim, value_dim),
        n=q.new_zeros(batch, heads, head_dim),
        m=q.new_full((batch, heads), float("-inf")),
    )


def check_state(state: MLSTMState, q: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError unless ``state`` fits q: (B, NH, S, DH) and v: (B, NH, S, DHV)."""
    batch, heads, head_dim, value_dim = q.shape[0], q.shape[1], q.shape[-1], v.shape[-1]
    expected = {
        "c": (batch, heads, head_dim, value_dim),
        "n": (batch, heads, head_dim),
        "m": (batch, heads),
    }
    for name, shape in expected.items():
        got = tuple(getattr(state, name).shape)
        if got != shape:
            raise ValueError(f"initial_state.{name} has shape {got}, expected {shape} for q {tuple(q.shape)}")

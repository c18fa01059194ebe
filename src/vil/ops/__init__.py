"""Functional ops: the mLSTM cell in its three forms."""

from .mlstm_backend import BACKENDS, choose_backend, mlstm
from .mlstm_chunkwise import mlstm_chunkwise
from .mlstm_parallel import mlstm_parallel
from .mlstm_recurrent import mlstm_recurrent, mlstm_recurrent_step
from .mlstm_state import MLSTMState, empty_state

__all__ = [
    "BACKENDS",
    "MLSTMState",
    "choose_backend",
    "empty_state",
    "mlstm",
    "mlstm_chunkwise",
    "mlstm_parallel",
    "mlstm_recurrent",
    "mlstm_recurrent_step",
]

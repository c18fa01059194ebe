"""Functional ops: the mLSTM cell in its three forms."""

from .backend import BACKENDS, choose_backend, mlstm
from .chunkwise import mlstm_chunkwise
from .parallel import mlstm_parallel
from .recurrent import mlstm_recurrent, mlstm_recurrent_step
from .state import MLSTMState, empty_state

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

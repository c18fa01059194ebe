import pytest
import torch

# One thread: on the 2-core CI machine two threads are often slower, and timings do not matter in tests.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

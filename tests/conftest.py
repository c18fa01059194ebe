import pytest
import torch

# One thread: on the 2-core CI machine two threads are often slower, and timings do not matter in tests.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_png(tmp_path_factory):
    """The embedded digits written as PNG files in the ImageNet folder layout (train/ and val/), once per session."""
    from vil.data.digits import export_image_folder

    return export_image_folder(tmp_path_factory.mktemp("png") / "digits")

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


@pytest.fixture(params=["recompute", "plain"])
def recompute_mode(request, monkeypatch):
    """Run a test both with the memory-lean recomputing paths (forced on for tiny inputs) and without them."""
    import vil.ops.projected

    monkeypatch.setattr(vil.ops.projected, "RECOMPUTE_MIN_ELEMENTS", 0 if request.param == "recompute" else 2**62)
    return request.param

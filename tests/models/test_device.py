import pytest
import torch

from models.device import DeviceUnavailableError, choose_device


def test_cpu_and_auto():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_requested_without_gpu_names_the_problem():
    with pytest.raises(DeviceUnavailableError, match="cuda.is_available"):
        choose_device("cuda")


def test_unknown_preference():
    with pytest.raises(ValueError, match="unknown device"):
        choose_device("tpu")

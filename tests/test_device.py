import pytest
import torch

from embedsearch.device import resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", "", "cuda:-1"])
def test_malformed_names_are_rejected(name):
    with pytest.raises(ValueError, match="expected 'cpu', 'cuda', 'cuda:N' or 'auto'"):
        resolve_device(name)


def test_absent_cuda_device_is_a_clear_error():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"cuda:{count}.*{count} CUDA device"):
        resolve_device(f"cuda:{count}")

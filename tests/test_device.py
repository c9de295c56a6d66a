"""Device choice: `auto` picks the freest CUDA GPU, else mps, else cpu; absent devices are errors."""

import pytest
import torch
from helpers import assert_one_line_error, invoke

from ganctl.device import resolve_device
from ganctl.errors import DeviceError


def test_device_choice_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_auto_picks_the_gpu_with_most_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    free = {0: 5, 1: 9, 2: 7}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 10))
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:2") == torch.device("cuda", 2)
    with pytest.raises(DeviceError, match="only 3 CUDA GPU"):
        resolve_device("cuda:3")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_absent_cuda_is_a_one_line_error(trained_run, device):
    assert_one_line_error(invoke("train", "--device", device), 1, f"--device {device}",
                          "no CUDA GPU")
    assert_one_line_error(invoke("sample", "x.png", "--device", device), 1, "no CUDA GPU")

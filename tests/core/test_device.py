"""Device choice: names checked, auto picks what exists, an absent device is refused; threads for a block."""

import pytest
import torch

from ulmed.core.device import resolve_device, threads
from ulmed.errors import ConfigError


def test_cpu_and_auto_resolve_to_available_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device()
    assert auto.type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        assert auto.type != "cuda"


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU ", ""])
def test_malformed_names_are_refused(name):
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_says_to_use_the_cpu():
    with pytest.raises(ConfigError, match="--device cpu"):
        resolve_device("cuda:0")


def test_threads_hold_inside_the_block_and_are_restored_after_an_error():
    old = torch.get_num_threads()
    with threads(None):
        assert torch.get_num_threads() == old
    with pytest.raises(RuntimeError), threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == old

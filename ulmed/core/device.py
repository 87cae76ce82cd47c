"""Device choice (cuda, then mps, then cpu, unless the user names one) and CPU threads for a block."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from ulmed.errors import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into an available :class:`torch.device`.

    Raises:
        ConfigError: The name is malformed or the device is not available here.
    """
    if not _DEVICE.match(name):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for, but it is not available here; use --device cpu")
    return torch.device(name)


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """torch CPU threads set to ``n`` inside the block (None: unchanged), restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n or old)
    try:
        yield
    finally:
        torch.set_num_threads(old)

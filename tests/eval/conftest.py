"""Eval tests run torch on one CPU thread.

On a small shared machine two OpenMP threads competing with another busy process ran a
small UNet step about 25x slower than one thread; one thread is also what makes the
same-seed comparisons exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

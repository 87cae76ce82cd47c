"""Fixtures for the core tests: small real HC18 batches in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def t64(values) -> torch.Tensor:
    """A float64 tensor (the Bayes-error estimator's tests compare in double precision)."""
    return torch.tensor(values, dtype=torch.float64)


def gen(seed: int) -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def load_hc18(real_data: Path, n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` HC18 ultrasound images and head masks, resized to ``size`` x ``size``.

    Returns:
        Images ``(n, 1, size, size)`` in [0, 1] and float masks ``(n, 1, size, size)`` in {0, 1}.
    """
    names = sorted(p.name for p in (real_data / "hc18" / "images").glob("*.png"))[:n]
    imgs, masks = [], []
    for name in names:
        img = np.asarray(Image.open(real_data / "hc18" / "images" / name).convert("L"), dtype=np.float32) / 255.0
        mask = (np.asarray(Image.open(real_data / "hc18" / "masks" / name).convert("L")) > 0).astype(np.float32)
        imgs.append(torch.from_numpy(img)[None, None])
        masks.append(torch.from_numpy(mask)[None, None])
    x = torch.nn.functional.interpolate(torch.cat(imgs), size=(size, size), mode="bilinear", align_corners=False)
    y = torch.nn.functional.interpolate(torch.cat(masks), size=(size, size), mode="nearest")
    return x.clamp(0.0, 1.0), y


@pytest.fixture(scope="session")
def hc18_small(real_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Two HC18 images at 32x32 with their masks."""
    return load_hc18(real_data, 2)


@pytest.fixture(scope="session")
def hc18_eight(real_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight HC18 images at 32x32 with their masks."""
    return load_hc18(real_data, 8)

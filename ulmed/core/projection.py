"""Projection helpers kept apart from the optimisation loop (advertorch style)."""

from __future__ import annotations

import numpy as np


def project_linf(delta: np.ndarray, eps: float) -> np.ndarray:
    """Clamp a perturbation to the L-inf ball of radius ``eps``."""
    return np.clip(delta, -eps, eps)


def clip_to_unit(x: np.ndarray) -> np.ndarray:
    """Clamp an image in [0, 1] space to the valid range."""
    return np.clip(x, 0.0, 1.0)

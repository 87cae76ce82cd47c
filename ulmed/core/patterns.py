"""Fixed class-coded patterns: the training-free shortcut that LSP-style noise plants.

Each class gets a random ``+-1`` pattern (blocks of ``block`` positions, period ``tile``),
drawn from the seed alone so that a whole data set shares one code. :func:`mask_coded`
gives every position the pattern of its own class, so a mask is drawn as a texture.
Used by the ``lsp`` baseline and as the optional warm start of the min-min methods.
"""

from __future__ import annotations

import numpy as np


def class_pattern(cls: int, channels: int, spatial: tuple[int, ...], tile: int, block: int, seed: int) -> np.ndarray:
    """The ``+-1`` pattern of class ``cls``, tiled over ``(channels, *spatial)``."""
    rng = np.random.default_rng([seed, cls])
    cells = -(-tile // block)
    code = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(channels, *([cells] * len(spatial))))
    for axis in range(1, code.ndim):
        code = np.repeat(code, block, axis=axis)
    code = code[(slice(None), *([slice(0, tile)] * len(spatial)))]
    reps = (1, *(-(-s // tile) for s in spatial))
    return np.tile(code, reps)[(slice(None), *(slice(0, s) for s in spatial))]


def mask_coded(
    target: np.ndarray | int | None, channels: int, spatial: tuple[int, ...], tile: int, block: int, seed: int
) -> np.ndarray:
    """``(channels, *spatial)`` code: per position its class's pattern.

    ``target`` is a mask/label map (per-position classes), a class label (one pattern
    everywhere) or None (class 0 everywhere).
    """
    if target is None or isinstance(target, (int, np.integer)):
        return class_pattern(0 if target is None else int(target), channels, spatial, tile, block, seed)
    code = np.zeros((channels, *spatial), dtype=np.float32)
    for value in np.unique(target):
        where = np.broadcast_to(target == value, code.shape)
        code[where] = class_pattern(int(value), channels, spatial, tile, block, seed)[where]
    return code

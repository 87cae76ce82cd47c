"""Fixed class-coded patterns: the training-free shortcut that LSP-style noise plants.

Each class gets a random ``+-1`` pattern (blocks of ``block`` positions, period ``tile``),
drawn from the seed alone so that a whole data set shares one code. :func:`mask_coded`
gives every position the pattern of its own class, so a mask is drawn as a texture.
Used by the ``lsp`` baseline.

:func:`nyquist_coded` is the other family: each foreground class is drawn with a pattern at
the highest frequency the grid holds (the checkerboard ``(-1)^(i+j)`` and its relatives, one
corner of the frequency square each), the background is left untouched. A strided CNN folds
these patterns to a constant at its first stride-2 layer, so it reads them with one signed
filter; every integer shift, flip or 90-degree rotation maps each of them to plus or minus
itself, so they have no phase for those transformations to scramble.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from ulmed.errors import ConfigError


def class_pattern(cls: int, channels: int, spatial: tuple[int, ...], tile: int, block: int, seed: int) -> np.ndarray:
    """The ``+-1`` pattern of class ``cls``, tiled over ``(channels, *spatial)``."""
    rng = np.random.default_rng([seed, cls])
    cells = -(-tile // block)
    code = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(channels, *([cells] * len(spatial))))
    for axis in range(1, code.ndim):
        code = np.repeat(code, block, axis=axis)
    code = code[(slice(None), *([slice(0, tile)] * len(spatial)))]
    for axis, size in enumerate(spatial, start=1):  # the tile repeated along each axis, cut to size
        code = np.take(code, np.arange(size) % tile, axis=axis)
    return code


#: Widest range of non-negative integer classes that :func:`class_values` counts instead of sorting.
COUNTED_CLASSES = 1 << 16


def class_values(target: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a target (``numpy.unique``), counted for small non-negative integers.

    A label map holds a handful of classes: ``numpy.bincount`` finds them in one pass, where
    ``numpy.unique`` sorts the whole map (3x slower on a hippocampus crop).
    """
    arr = np.asarray(target)
    if arr.dtype.kind in "iu" and arr.size and 0 <= arr.min() and arr.max() < COUNTED_CLASSES:
        return np.flatnonzero(np.bincount(arr.reshape(-1))).astype(arr.dtype)
    return np.unique(arr)


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
    for value in class_values(target):
        where = np.broadcast_to(target == value, code.shape)
        code[where] = class_pattern(int(value), channels, spatial, tile, block, seed)[where]
    return code


def nyquist_corners(spatial_dims: int) -> list[tuple[int, ...]]:
    """The axis sets of the Nyquist patterns, all axes first (the checkerboard), then fewer."""
    axes = range(spatial_dims)
    return [c for k in range(spatial_dims, 0, -1) for c in combinations(axes, k)]


def nyquist_pattern(index: int, channels: int, spatial: tuple[int, ...], cell: int = 1,
                    origin: Sequence[int] = ()) -> np.ndarray:
    """The ``+-1`` Nyquist pattern number ``index`` (>= 1), the same in every channel.

    Patterns ``1..n`` are ``(-1)^(sum of the indices along the axes of corner k)`` for the
    ``n = 2^dims - 1`` corners of :func:`nyquist_corners` (pattern 1: the checkerboard);
    ``n+1..2n`` are their negatives; the numbering then repeats. With ``cell > 1`` the
    indices count cells of ``cell`` positions: the pattern of a grid ``cell`` times coarser.
    ``origin``: the index of the first position along each axis (0 where not given): the
    pattern of a larger frame that this array starts inside.
    """
    if cell < 1:
        raise ValueError(f"a Nyquist cell holds at least one position, got {cell}")
    if index < 1:
        raise ValueError(f"Nyquist patterns are numbered from 1, got {index}")
    code = _pattern_at(index, _shifted(np.indices(spatial, sparse=True), origin), cell)
    return np.broadcast_to(np.broadcast_to(code, spatial)[None], (channels, *spatial)).copy()


def _shifted(coords: Sequence[np.ndarray], origin: Sequence[int]) -> list[np.ndarray]:
    """``coords`` (one array per axis) moved by ``origin`` (missing axes: 0)."""
    if not any(origin):
        return list(coords)
    return [c + (int(origin[a]) if a < len(origin) else 0) for a, c in enumerate(coords)]


def _pattern_at(index: int, coords: tuple[np.ndarray, ...] | list[np.ndarray], cell: int) -> np.ndarray:
    """Pattern ``index`` of :func:`nyquist_pattern` (float32 +-1) at the positions ``coords``, one array per
    spatial axis (broadcasting against each other: sparse grids, or the indices of a mask's positions)."""
    corners = nyquist_corners(len(coords))
    k = (index - 1) % (2 * len(corners))
    sign = 1.0 if k < len(corners) else -1.0
    parity = sum(coords[a] // cell for a in corners[k % len(corners)])
    return np.where(parity % 2 == 0, sign, -sign).astype(np.float32)


def nyquist_coded(
    target: np.ndarray | int | None, channels: int, spatial: tuple[int, ...], cell: int = 1,
    origin: Sequence[int] = (),
) -> np.ndarray:
    """``(channels, *spatial)`` code: each foreground position its class's Nyquist pattern.

    In a mask/label map, value 0 (background) gets no code and value ``v`` gets pattern
    ``v`` (255, the foreground of binary 8-bit masks, counts as 1), so a data set's classes
    keep their patterns from image to image. A class label ``c`` codes the whole image with
    pattern ``c + 1``; None (no target) with pattern 1. ``cell`` and ``origin`` (the pattern's
    phase: where the array starts in the frame the code is made for): see :func:`nyquist_pattern`.

    Raises:
        ConfigError: A negative class value.
    """
    values = class_values(np.asarray(0 if target is None else target))
    if values[0] < 0:
        raise ConfigError("Nyquist codes need class values >= 0 (masks, label maps, class labels); "
                          "map negative labels (e.g. an ignore value) to 0 or a class first")
    if target is None or isinstance(target, (int, np.integer)):
        return nyquist_pattern(1 if target is None else int(target) + 1, channels, spatial, cell, origin)
    code = np.zeros((channels, *spatial), dtype=np.float32)
    labels = np.asarray(target)
    for value in values[values != 0]:  # the pattern computed at the class's own positions only
        at = np.unravel_index(np.flatnonzero(labels == value), labels.shape)  # nonzero's order, 2-3x faster
        code[(slice(None), *at)] = _pattern_at(1 if value == 255 else int(value), _shifted(at, origin), cell)
    return code


def offset_level(value: int) -> float:
    """The constant of foreground class ``value`` in :func:`offset_coded`: +1, -1, +1/2, -1/2, +1/3, ...

    255 (the foreground of binary 8-bit masks) counts as class 1.
    """
    k = 1 if value == 255 else int(value)
    if k < 1:
        raise ValueError(f"offset levels are for foreground classes >= 1, got {value}")
    return (1.0 if k % 2 else -1.0) / ((k + 1) // 2)


def offset_coded(target: np.ndarray | int | None, channels: int, spatial: tuple[int, ...]) -> np.ndarray:
    """``(channels, *spatial)`` code: each foreground position the constant of its class.

    The smoothest mask code: class ``v`` of a mask or label map is lifted (or lowered) by
    :func:`offset_level` ``(v)``, the background is left untouched, so the code is a step at
    every label boundary and flat inside. Being a function of the mask alone, it moves with the
    mask under every warp a trainer applies to image and mask together (rotation, scaling,
    elastic), and resizing or resampling, which keeps low frequencies, keeps it. A class label
    ``c`` lifts the whole image by the level of ``c + 1``; None (no target) gives no code.

    Raises:
        ConfigError: A negative class value.
    """
    if target is None:
        return np.zeros((channels, *spatial), dtype=np.float32)
    values = class_values(np.asarray(target))
    if values[0] < 0:
        raise ConfigError("offset codes need class values >= 0 (masks, label maps, class labels); "
                          "map negative labels (e.g. an ignore value) to 0 or a class first")
    if isinstance(target, (int, np.integer)):
        return np.full((channels, *spatial), offset_level(int(target) + 1), dtype=np.float32)
    code = np.zeros(spatial, dtype=np.float32)
    for value in values[values != 0]:
        code[target == value] = offset_level(int(value))
    return np.broadcast_to(code[None], (channels, *spatial)).copy()

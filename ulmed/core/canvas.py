"""Putting records of different sizes into one tensor, and large volumes into tiles.

Methods that optimise over a data set need a batch tensor ``(N, C, *spatial)``. Records
differ in size, so :func:`pad_stack` pads each to the largest shape (zeros, with a mask of
the real positions); :func:`tile` cuts a large image into non-overlapping tiles of a fixed
size (padding the border), so memory is bounded by the tile size whatever the volume
size, and :func:`untile` puts per-tile noise back together exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ulmed.errors import ConfigError


def pad_stack(arrays: Sequence[np.ndarray], multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pad channel-first arrays to a common shape and stack them.

    Args:
        arrays: Channel-first arrays with the same rank and channel count.
        multiple: Round every padded spatial size up to a multiple of this (UNet strides).

    Returns:
        ``(stack, valid)``: ``stack`` is ``(N, C, *max_spatial)`` float32, ``valid`` is
        ``(N, 1, *max_spatial)`` bool, True on real (not padded) positions.
    """
    if not arrays:
        raise ConfigError("nothing to stack")
    ndims = {a.ndim for a in arrays}
    channels = {a.shape[0] for a in arrays}
    if len(ndims) != 1 or len(channels) != 1:
        raise ConfigError(f"cannot stack arrays with different ranks or channel counts: {[a.shape for a in arrays]}")
    if multiple < 1:
        raise ConfigError(f"multiple must be >= 1, got {multiple}")
    shape = tuple(-(-max(a.shape[i] for a in arrays) // multiple) * multiple for i in range(1, arrays[0].ndim))
    stack = np.zeros((len(arrays), arrays[0].shape[0], *shape), dtype=np.float32)
    valid = np.zeros((len(arrays), 1, *shape), dtype=bool)
    for i, a in enumerate(arrays):
        region = tuple(slice(0, s) for s in a.shape[1:])
        stack[(i, slice(None), *region)] = a
        valid[(i, 0, *region)] = True
    return stack, valid


def crop(array: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
    """Undo :func:`pad_stack` for one item: ``array[:, :s0, :s1, ...]``."""
    return array[(slice(None), *(slice(0, s) for s in spatial_shape))]


@dataclass(frozen=True)
class TileLayout:
    """How an image of ``shape`` (spatial) was cut into tiles of ``tile``."""

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    grid: tuple[int, ...]

    @property
    def count(self) -> int:
        """Number of tiles."""
        return int(np.prod(self.grid))


def tile(array: np.ndarray, tile_size: Sequence[int]) -> tuple[np.ndarray, TileLayout]:
    """Cut a channel-first array into non-overlapping tiles (zero-padded at the far border).

    Args:
        array: ``(C, *spatial)``.
        tile_size: Tile size per spatial axis; axes smaller than the tile are kept whole.

    Returns:
        ``(tiles, layout)`` with ``tiles`` of shape ``(count, C, *tile)``.
    """
    spatial = array.shape[1:]
    if len(tile_size) != len(spatial):
        raise ConfigError(f"tile size {tuple(tile_size)} does not match {len(spatial)} spatial axes")
    size = tuple(min(int(t), s) for t, s in zip(tile_size, spatial, strict=True))
    if any(t < 1 for t in size):
        raise ConfigError(f"tile size must be positive, got {tuple(tile_size)}")
    grid = tuple(-(-s // t) for s, t in zip(spatial, size, strict=True))
    padded = np.zeros((array.shape[0], *(g * t for g, t in zip(grid, size, strict=True))), dtype=array.dtype)
    padded[(slice(None), *(slice(0, s) for s in spatial))] = array
    tiles = []
    for index in np.ndindex(*grid):
        window = tuple(slice(i * t, (i + 1) * t) for i, t in zip(index, size, strict=True))
        tiles.append(padded[(slice(None), *window)])
    return np.stack(tiles), TileLayout(tuple(spatial), size, grid)


def untile(tiles: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Inverse of :func:`tile`: put tiles ``(count, C, *tile)`` back into ``(C, *shape)``."""
    if tiles.shape[0] != layout.count:
        raise ConfigError(f"expected {layout.count} tiles, got {tiles.shape[0]}")
    padded = tuple(g * t for g, t in zip(layout.grid, layout.tile, strict=True))
    full = np.zeros((tiles.shape[1], *padded), dtype=tiles.dtype)
    for k, index in enumerate(np.ndindex(*layout.grid)):
        window = tuple(slice(i * t, (i + 1) * t) for i, t in zip(index, layout.tile, strict=True))
        full[(slice(None), *window)] = tiles[k]
    return crop(full, layout.shape)

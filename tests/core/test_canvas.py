"""Padding to a common shape and cutting into tiles, both exactly invertible."""

import numpy as np
import pytest

from ulmed.core.canvas import crop, pad_stack, tile, untile
from ulmed.errors import ConfigError


def test_pad_stack_and_crop_round_trip():
    a, b = np.ones((1, 5, 7)), np.full((1, 6, 3), 2.0)
    stack, valid = pad_stack([a, b], multiple=4)
    assert stack.shape == (2, 1, 8, 8) and valid.shape == (2, 1, 8, 8)
    assert valid[0].sum() == 35 and valid[1].sum() == 18
    assert np.array_equal(crop(stack[1], (6, 3)), b)


@pytest.mark.parametrize(
    "shape,size", [((1, 33, 41, 25), (16, 16, 16)), ((2, 50, 30), (16, 16)), ((1, 8, 8), (16, 16))]
)
def test_tile_untile_exact(shape, size):
    arr = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    tiles, layout = tile(arr, size)
    assert tiles.shape[0] == layout.count and tiles.shape[1] == shape[0]
    assert np.array_equal(untile(tiles, layout), arr)


def test_tile_layout_counts_and_refusals():
    tiles, layout = tile(np.zeros((1, 10, 7), dtype=np.float32), (4, 4))
    assert layout.grid == (3, 2) and layout.count == 6 and tiles.shape == (6, 1, 4, 4)
    with pytest.raises(ConfigError, match="spatial axes"):
        tile(np.zeros((1, 4, 4)), (4,))
    with pytest.raises(ConfigError, match="expected 6 tiles"):
        untile(tiles[:5], layout)
    with pytest.raises(ConfigError, match="different ranks"):
        pad_stack([np.zeros((1, 4, 4)), np.zeros((2, 4, 4))])

"""Class-coded patterns: +-1 codes per class, mask-coded images, Nyquist patterns, offsets."""

import numpy as np
import pytest

from ulmed.core.patterns import (
    class_pattern,
    class_values,
    mask_coded,
    nyquist_coded,
    nyquist_corners,
    nyquist_pattern,
    offset_coded,
    offset_level,
)
from ulmed.errors import ConfigError


def test_class_pattern_is_a_seeded_tiled_sign_code():
    p = class_pattern(1, 2, (10, 12), tile=4, block=2, seed=0)
    assert p.shape == (2, 10, 12) and set(np.unique(p)) <= {-1.0, 1.0}
    assert np.array_equal(p[:, :4, :4], p[:, 4:8, 4:8])  # period 4
    assert np.array_equal(p[:, 0, 0], p[:, 1, 1])  # blocks of 2
    assert np.array_equal(p, class_pattern(1, 2, (10, 12), 4, 2, 0))
    assert not np.array_equal(p, class_pattern(2, 2, (10, 12), 4, 2, 0))


def test_mask_coded_gives_each_position_its_class_pattern():
    target = np.zeros((8, 8), dtype=int)
    target[:, 4:] = 3
    code = mask_coded(target, 1, (8, 8), 4, 1, seed=5)
    assert np.array_equal(code[:, :, :4], class_pattern(0, 1, (8, 8), 4, 1, 5)[:, :, :4])
    assert np.array_equal(code[:, :, 4:], class_pattern(3, 1, (8, 8), 4, 1, 5)[:, :, 4:])
    assert np.array_equal(mask_coded(2, 1, (8, 8), 4, 1, 5), class_pattern(2, 1, (8, 8), 4, 1, 5))


def test_nyquist_patterns_start_at_the_checkerboard_and_negate_after_the_corners():
    assert nyquist_corners(2) == [(0, 1), (0,), (1,)]
    board = nyquist_pattern(1, 1, (4, 4))[0]
    assert np.array_equal(board, np.where(np.add.outer(range(4), range(4)) % 2 == 0, 1.0, -1.0))
    assert np.array_equal(nyquist_pattern(4, 1, (4, 4)), -nyquist_pattern(1, 1, (4, 4)))
    assert np.array_equal(nyquist_pattern(1, 1, (4, 4), cell=2)[0, :2, :2], np.ones((2, 2)))


def test_nyquist_coded_leaves_the_background_and_refuses_negative_classes():
    target = np.zeros((4, 4), dtype=int)
    target[1:3, 1:3] = 255
    code = nyquist_coded(target, 1, (4, 4))
    assert not code[0][target == 0].any()
    assert np.array_equal(code[0][target == 255], nyquist_pattern(1, 1, (4, 4))[0][target == 255])
    assert np.array_equal(nyquist_coded(1, 1, (4, 4)), nyquist_pattern(2, 1, (4, 4)))
    with pytest.raises(ConfigError, match=">= 0"):
        nyquist_coded(np.full((4, 4), -1), 1, (4, 4))


def test_class_values_are_numpys_unique_for_every_kind_of_target():
    rng = np.random.default_rng(2)
    targets = [rng.integers(0, 3, (9, 11, 7)).astype(np.uint8), rng.integers(0, 3, (30, 40)).astype(np.int32),
               np.array([5, 255, 0, 255], dtype=np.uint8), np.array([-1, 0, 2]), np.array([0, 70000, 3]),
               np.array([0.0, 1.0, 2.0], dtype=np.float32), np.asarray(4), np.zeros((0,), dtype=np.uint8)]
    for target in targets:
        got, expected = class_values(target), np.unique(target)
        assert got.dtype == expected.dtype and got.tolist() == expected.tolist(), target


def test_nyquist_coded_draws_each_class_where_numpy_nonzero_finds_it():
    rng = np.random.default_rng(3)
    for shape in ((13, 17), (9, 12, 10)):
        target = rng.integers(0, 4, shape).astype(np.uint8)
        code = nyquist_coded(target, 2, shape, cell=2)
        for value in range(1, 4):  # each class carries its own pattern at exactly its positions
            at = np.nonzero(target == value)
            assert np.array_equal(code[(slice(None), *at)], nyquist_pattern(value, 2, shape, 2)[(slice(None), *at)])
        assert not code[:, target == 0].any()


def test_an_origin_gives_the_code_of_the_larger_frame_the_array_starts_inside():
    rng = np.random.default_rng(5)
    target = rng.integers(0, 3, (7, 9)).astype(np.uint8)
    frame = np.zeros((16, 16), dtype=np.uint8)
    frame[5:12, 3:12] = target  # the image as a centred letterbox pads it
    expected = nyquist_coded(frame, 1, frame.shape, cell=2)[:, 5:12, 3:12]
    assert np.array_equal(nyquist_coded(target, 1, target.shape, cell=2, origin=(5, 3)), expected)
    assert not np.array_equal(nyquist_coded(target, 1, target.shape, cell=2), expected)  # row 5: another phase
    assert np.array_equal(nyquist_coded(None, 1, (4, 4), origin=(1, 0)), -nyquist_pattern(1, 1, (4, 4)))


def test_offset_levels_alternate_in_sign_and_shrink():
    assert [offset_level(k) for k in (1, 2, 3, 4, 5)] == [1.0, -1.0, 0.5, -0.5, 1 / 3]
    assert offset_level(255) == 1.0
    with pytest.raises(ValueError, match=">= 1"):
        offset_level(0)


def test_offset_coded_is_flat_in_each_class_and_zero_on_the_background():
    target = np.zeros((6, 6), dtype=np.int64)
    target[:2], target[4:] = 1, 2
    code = offset_coded(target, 2, (6, 6))
    assert code.shape == (2, 6, 6) and np.array_equal(code[0], code[1])
    assert np.all(code[:, :2] == 1.0) and np.all(code[:, 4:] == -1.0) and np.all(code[:, 2:4] == 0.0)
    assert np.all(offset_coded(np.where(target == 1, 255, 0), 1, (6, 6))[0][:2] == 1.0)
    assert np.all(offset_coded(2, 1, (3, 3)) == 0.5) and not offset_coded(None, 1, (3, 3)).any()
    with pytest.raises(ConfigError, match=">= 0"):
        offset_coded(np.full((4, 4), -1), 1, (4, 4))

"""Counted percentiles equal numpy's, bit for bit."""

import numpy as np
import pytest

from ulmed.io.percentile import COUNTED_RANGE, percentiles, robust_sample


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.int64])
def test_counted_percentiles_equal_numpys_linear_percentiles(dtype):
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    for _ in range(200):
        n = int(rng.integers(1, 3000))
        values = rng.integers(max(info.min, -3000), min(info.max, 5000), n).astype(dtype)
        q = [0.0, 0.5, float(rng.uniform(0, 100)), 50.0, 99.5, 100.0]
        assert percentiles(values, q) == [float(v) for v in np.percentile(values, q)]


def test_a_ct_like_volume_with_a_long_air_tail_gives_numpys_robust_range():
    rng = np.random.default_rng(0)
    volume = np.full((20, 64, 64), -1024, dtype=np.int32)
    volume[:, 16:48, 16:48] = rng.integers(-200, 1800, (20, 32, 32))
    sample = robust_sample(volume)
    assert percentiles(sample, (0.5, 99.5)) == [float(v) for v in np.percentile(sample, (0.5, 99.5))]


def test_floats_and_ranges_too_wide_to_count_are_left_to_numpy():
    rng = np.random.default_rng(1)
    floats = rng.normal(size=500)
    assert percentiles(floats, (5, 95)) == [float(v) for v in np.percentile(floats, (5, 95))]
    wide = np.array([0, COUNTED_RANGE * 4, 3, 7], dtype=np.int64)
    assert percentiles(wide, (25, 75)) == [float(v) for v in np.percentile(wide, (25, 75))]


def test_robust_sample_keeps_at_most_about_a_million_values_regularly_spaced():
    values = np.arange(5_000_000, dtype=np.int32)
    sample = robust_sample(values)
    assert 1 << 20 <= sample.size <= 2 * (1 << 20)
    steps = np.diff(sample)
    assert (steps == steps[0]).all() and steps[0] > 1
    small = np.arange(10)
    assert np.array_equal(robust_sample(small), small)


def test_an_empty_array_is_refused():
    with pytest.raises(ValueError, match="empty"):
        percentiles(np.array([], dtype=np.int16), (50,))

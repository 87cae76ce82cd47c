"""The Python API: ulmed.protect over arrays and paths."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import ulmed


def test_protect_uint8_array_keeps_shape_dtype_and_budget(sample_data):
    img = np.asarray(Image.open(sample_data / "hc18/images/012_HC.png"))
    out = ulmed.protect(img, eps="4/255", seed=2)
    assert out.shape == img.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - img.astype(int))
    assert diff.max() <= 4 and diff.mean() > 0.5
    assert np.array_equal(out, ulmed.protect(img, eps="4/255", seed=2))


def test_protect_float_rgb_array_with_channel_axis():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, size=(24, 20, 3)).astype(np.float32)
    out = ulmed.protect_array(img, eps=0.02, channel_axis=-1)
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.abs(out - img).max() <= 0.02 + 1e-6
    assert out.min() >= 0 and out.max() <= 1


def test_protect_array_refuses_out_of_range_floats_and_paths_need_output(sample_data):
    with pytest.raises(ulmed.ConfigError, match=r"\[0, 1\]"):
        ulmed.protect(np.full((8, 8), 2.0))
    with pytest.raises(ulmed.ConfigError, match="output"):
        ulmed.protect(sample_data / "hc18")


def test_protect_path_returns_manifest(sample_data, tmp_path):
    manifest = ulmed.protect(sample_data / "hc18", tmp_path / "o", eps="2/255")
    assert manifest.counts()["written"] == 3
    assert (tmp_path / "o/manifest.json").is_file()

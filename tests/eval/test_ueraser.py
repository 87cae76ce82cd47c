"""UEraser's augmentation: smooth random intensity fields per sample, a channel shuffle for RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kornia.contrib import diamond_square

from ulmed.errors import ConfigError
from ulmed.eval.ueraser import UEraser, plasma


def _roughness(field: np.ndarray) -> float:
    """Mean absolute difference of neighbours along every axis, over the field's spread."""
    diffs = [np.abs(np.diff(field, axis=a)).mean() for a in range(field.ndim)]
    return float(np.mean(diffs) / field.std())


def test_plasma_maps_are_smooth_bounded_and_fresh_per_draw():
    rng = np.random.default_rng(0)
    maps = np.stack([plasma((64, 48), 0.5, rng) for _ in range(40)])
    assert maps.shape == (40, 64, 48) and maps.dtype == np.float32
    assert 0 <= maps.min() and maps.max() <= 1 and abs(maps.mean() - 0.5) < 0.03
    white = rng.random((64, 48))
    assert np.mean([_roughness(m) for m in maps]) < 0.3 * _roughness(white)  # white noise: about 1.1
    assert not np.allclose(maps[0], maps[1])
    smooth, rough = (np.mean([_roughness(plasma((64, 64), r, rng)) for _ in range(20)]) for r in (0.3, 0.7))
    assert smooth < rough  # lower roughness, smoother map
    np.testing.assert_array_equal(plasma((9, 5), 0.5, np.random.default_rng(3)), plasma((9, 5), 0.5,
                                                                                          np.random.default_rng(3)))


def test_plasma_in_3d_is_smooth_along_every_axis():
    field = plasma((12, 40, 33), 0.5, np.random.default_rng(1))
    assert field.shape == (12, 40, 33)
    per_axis = [np.abs(np.diff(field, axis=a)).mean() for a in range(3)]
    assert max(per_axis) < 1.6 * min(per_axis)  # one node spacing along every axis
    assert _roughness(field) < 0.35


def test_plasma_maps_vary_like_kornias_diamond_square():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    ours = np.stack([plasma((32, 32), 0.5, rng) for _ in range(60)])
    theirs = diamond_square((60, 1, 32, 32), 0.5).numpy()[:, 0]
    fine = [np.abs(np.diff(m, axis=-1)).mean() for m in (ours, theirs)]
    spread = [m.reshape(60, -1).std(1).mean() for m in (ours, theirs)]
    assert 0.75 < fine[0] / fine[1] < 1.33 and 0.75 < spread[0] / spread[1] < 1.5, (fine, spread)


def test_ueraser_changes_intensities_smoothly_and_leaves_targets():
    image = np.full((1, 48, 48), 0.5, dtype=np.float32)
    mask = np.zeros((48, 48), dtype=np.int64)
    mask[10:20, 5:30] = 1
    aug = UEraser()
    rng = np.random.default_rng(0)
    outs = []
    for _ in range(8):
        out, out_mask = aug(image, mask, rng)
        assert out.shape == image.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        assert out_mask is mask
        outs.append(out[0])
    changes = np.stack(outs) - 0.5
    assert np.abs(changes).mean() > 0.05  # a visible change, not a nudge
    assert np.mean([_roughness(c) for c in changes]) < 0.4  # smooth fields, not pixel noise
    assert not np.allclose(outs[0], outs[1])  # fresh per draw
    again = aug(image, mask, np.random.default_rng(0))[0]
    np.testing.assert_array_equal(again[0], outs[0])  # reproducible from the rng
    assert aug(image, 1, rng)[1] == 1
    volume = np.full((1, 8, 16, 16), 0.4, dtype=np.float32)
    assert aug(volume, 0, rng)[0].shape == volume.shape


def test_ueraser_shuffles_rgb_channels_about_half_the_time():
    y, x = np.mgrid[0:32, 0:32]
    signs = np.stack([(-1.0) ** x, (-1.0) ** y, (-1.0) ** (x + y)])  # one fine pattern per channel
    image = (0.5 + 0.1 * signs).astype(np.float32)
    rng = np.random.default_rng(0)
    aug = UEraser()
    moved = 0
    for _ in range(120):
        out = aug(image, 0, rng)[0]  # the smooth fields leave the fine patterns where they are
        corr = np.corrcoef(out.reshape(3, -1), signs.reshape(3, -1))[:3, 3:]
        moved += not np.array_equal(corr.argmax(1), np.arange(3))
    assert 0.3 < moved / 120 < 0.55  # p 0.5, of which 1 in 6 is the identity: 0.42
    with pytest.raises(ConfigError, match="roughness"):
        UEraser(roughness=(0.5, 1.5))
    with pytest.raises(ConfigError, match="image"):
        aug(np.zeros((4, 4), np.float32), 0, rng)

import numpy as np
import pytest
from PIL import Image

from ulmed.baselines.lsp import MaskCodedPatterns
from ulmed.core.patterns import class_pattern
from ulmed.errors import ConfigError
from ulmed.io.record import IntensityMapping, Record


def _record(shared_data) -> Record:
    img = np.asarray(Image.open(shared_data / "hc18/images/012_HC.png"))[None]
    mask = np.asarray(Image.open(shared_data / "hc18/masks/012_HC.png"))
    return Record("012", img, IntensityMapping(0, 255, 0, 255, 1), 2, "image", target=mask)


def test_pattern_is_periodic_signed_and_class_specific():
    a = class_pattern(0, 1, (20, 20), tile=8, block=2, seed=0)
    b = class_pattern(255, 1, (20, 20), tile=8, block=2, seed=0)
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert np.array_equal(a[:, :8, :8], a[:, 8:16, 8:16])  # period 8
    assert np.array_equal(a[:, 0:2, 0:2], np.full((1, 2, 2), a[0, 0, 0]))  # 2x2 blocks
    assert not np.array_equal(a, b)
    assert np.array_equal(a, class_pattern(0, 1, (20, 20), tile=8, block=2, seed=0))


def test_noise_draws_the_mask_within_budget(shared_data):
    rec = _record(shared_data)
    out = MaskCodedPatterns("4/255", seed=3).protect(rec)
    delta = out.image[0] - rec.image[0].astype(np.float64)
    assert np.abs(delta).max() <= 4 + 1e-6
    fg = class_pattern(255, 1, rec.spatial_shape, 8, 1, 3)[0]
    bg = class_pattern(0, 1, rec.spatial_shape, 8, 1, 3)[0]
    inside = (rec.target == 255) & (rec.image[0] > 8) & (rec.image[0] < 247)  # away from clipping
    outside = (rec.target == 0) & (rec.image[0] > 8) & (rec.image[0] < 247)
    assert np.allclose(delta[inside], 4 * fg[inside], atol=1e-4)
    assert np.allclose(delta[outside], 4 * bg[outside], atol=1e-4)


def test_unlabelled_and_bad_parameters(shared_data):
    rec = _record(shared_data)
    rec.target = None
    delta = MaskCodedPatterns("2/255").protect(rec).image - rec.image
    assert np.abs(delta).max() <= 2 + 1e-6 and np.abs(delta).mean() > 1
    with pytest.raises(ConfigError):
        MaskCodedPatterns("2/255", tile=4, block=8)


def test_band_texture_energy_sits_at_its_period_and_survives_a_shift():
    from ulmed.core.patterns import band_texture

    t = band_texture(1, (64, 64), 4, seed=3)[0]
    assert set(np.unique(t)) == {-1.0, 1.0}
    f = np.fft.fftfreq(64)
    radius = np.sqrt(f[:, None] ** 2 + f[None] ** 2)
    power = np.abs(np.fft.fft2(t)) ** 2
    near = np.abs(radius - 0.25) < 0.08
    assert power[near].sum() / power.sum() > 0.6  # white +-1 noise would put ~13 % there
    shifted = np.roll(t, (1, 2), axis=(0, 1))  # same spectrum magnitude: no fixed phase to lose
    assert np.allclose(np.abs(np.fft.fft2(shifted)), np.abs(np.fft.fft2(t)), atol=1e-6)


def test_band_style_textures_only_the_classes_with_a_period():
    from ulmed.io.record import IntensityMapping, Record
    from ulmed.pipeline.protect import build_method

    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    rec = Record("a.png", np.full((1, 32, 32), 128, np.uint8), IntensityMapping(0, 255, 0, 255, 1), 2, "image", target=mask)
    m = build_method("lsp", "8/255", 0, "cpu", style="band", periods=(0, 4))
    d = m.perturbation(rec, rec.unit_image(), 8 / 255)
    assert np.all(d[0][mask == 0] == 0) and np.allclose(np.abs(d[0][mask > 0]), 8 / 255)
    other = build_method("lsp", "8/255", 0, "cpu", style="band", periods=(0, 4)).perturbation(
        Record("b.png", rec.image, rec.mapping, 2, "image", target=mask), rec.unit_image(), 8 / 255)
    assert not np.array_equal(d, other)  # a texture per record, not one shared pattern
    assert m.params()["periods"] == [0.0, 4.0]
    with pytest.raises(ConfigError, match="periods"):
        build_method("lsp", "8/255", 0, "cpu", style="band", periods=(0, 1))

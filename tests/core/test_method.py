import numpy as np
import pytest

from ulmed.baselines import RandomNoise
from ulmed.core.method import METHODS, record_seed
from ulmed.errors import ConfigError
from ulmed.io.record import IntensityMapping, Record


def _record(key: str = "a.png") -> Record:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(1, 32, 40)).astype(np.uint8)
    return Record(key=key, image=img, mapping=IntensityMapping(0, 255, 0, 255, 1), spatial_dims=2, kind="image")


def test_registry_lists_and_rejects():
    assert {"random", "none"} <= set(METHODS.names())
    with pytest.raises(ConfigError, match="random"):
        METHODS.get("nope")


def test_random_noise_respects_budget_and_range():
    rec = _record()
    out = RandomNoise("8/255", seed=1).protect(rec)
    diff = out.image - rec.image.astype(np.float64)
    assert np.abs(diff).max() <= 8 + 1e-9
    assert np.abs(diff).max() > 4  # it really perturbs
    assert out.image.min() >= 0 and out.image.max() <= 255
    assert out.target is rec.target and out.key == rec.key


def test_random_noise_is_deterministic_per_key_not_order():
    a, b = _record("a.png"), _record("b.png")
    m = RandomNoise("4/255", seed=3)
    first = m.protect(a).image
    m.protect(b)
    again = RandomNoise("4/255", seed=3).protect(a).image
    assert np.array_equal(first, again)
    assert not np.array_equal(first, RandomNoise("4/255", seed=4).protect(a).image)
    assert record_seed(0, "a") != record_seed(0, "b")


def test_native_budget_through_method():
    img = np.linspace(-1000, 1000, 2 * 16 * 16).reshape(1, 2, 16, 16)
    mapping = IntensityMapping.for_data(img, -32768, 32767, 1, unit="HU")
    rec = Record(key="ct", image=img, mapping=mapping, spatial_dims=3, kind="dicom")
    out = RandomNoise("20HU", seed=0).protect(rec)
    assert np.abs(out.image - img).max() <= 20 + 1e-6
    assert np.abs(out.image - img).max() > 10


def test_negative_seed_refused():
    with pytest.raises(ConfigError):
        RandomNoise("8/255", seed=-1)

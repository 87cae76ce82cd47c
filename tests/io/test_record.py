import numpy as np
import pytest

from ulmed.errors import ConfigError, InputError
from ulmed.io.record import IntensityMapping, Record


def test_mapping_round_trip_and_clip():
    m = IntensityMapping.for_data(np.array([-1000.0, 2000.0]), -1024, 3071, 1, unit="HU")
    x = np.array([-1000.0, 0.0, 2000.0])
    assert np.allclose(m.to_native(m.to_unit(x)), x, atol=1e-3)
    assert m.to_native(np.array([5.0]))[0] == 3071  # clipped to the valid range


def test_constant_data_gets_invertible_mapping():
    m = IntensityMapping.for_data(np.full(4, 255.0), 0, 255, 1)
    assert m.high > m.low and m.high <= 255


@pytest.mark.parametrize("kw", [dict(low=1, high=1), dict(low=0, high=300), dict(low=float("nan"), high=1)])
def test_bad_mapping_refused(kw):
    with pytest.raises(ConfigError):
        IntensityMapping(valid_min=0, valid_max=255, **kw)


def test_record_rejects_nan_and_bad_target():
    m = IntensityMapping(0, 1, 0, 1, 0)
    with pytest.raises(InputError, match="NaN"):
        Record("k", np.array([[[np.nan, 0.5]]]), m, 2, "image")
    with pytest.raises(InputError, match="does not match"):
        Record("k", np.zeros((1, 4, 4)), m, 2, "image", target=np.zeros((3, 4), dtype=np.uint8))
    with pytest.raises(ConfigError):
        Record("k", np.zeros((4, 4)), m, 2, "image")


def test_zero_perturbation_is_exact_for_floats():
    img = np.random.default_rng(0).normal(size=(1, 5, 6, 7)).astype(np.float32)
    m = IntensityMapping.for_data(img, -1e6, 1e6, 0.0)
    rec = Record("v", img, m, 3, "nifti")
    out = rec.with_perturbation(np.zeros_like(img))
    assert np.array_equal(out.image, img.astype(np.float64))
    moved = rec.with_perturbation(np.full_like(img, 0.01))
    step = moved.image - img
    assert np.all(step <= 0.01 * m.scale + 1e-6) and step.max() > 0.009 * m.scale

import numpy as np
import pytest

from ulmed.errors import ConfigError, InputError
from ulmed.io import quantise
from ulmed.io.record import IntensityMapping, Record, quantise_perturbation


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


def test_with_perturbation_holds_the_budget_on_stored_steps_per_slice():
    """A series whose slices have their own step (RescaleSlope) moves each slice by whole steps of its own."""
    rng = np.random.default_rng(2)
    steps = np.array([1.0, 0.5, 0.25])[None, :, None, None]
    img = rng.integers(0, 400, size=(1, 3, 8, 8)) * steps - 100
    m = IntensityMapping(low=-100.0, high=300.0, valid_min=-1000.0, valid_max=1000.0, quantum=1.0)
    rec = Record("s", img, m, 3, "dicom", quantum_map=steps)
    eps_native = 5.3
    out = rec.with_perturbation(rng.uniform(-1, 1, size=img.shape) * eps_native / m.scale, eps_native)
    change = out.image - img
    assert np.abs(change).max() <= eps_native
    np.testing.assert_allclose(change / steps, np.rint(change / steps), atol=1e-9)
    assert np.abs(change[:, 2]).max() == pytest.approx(5.25)  # 21 quarter steps fit in 5.3, 22 do not
    with pytest.raises(ConfigError, match="quantum_map"):
        Record("s", img, m, 3, "dicom", quantum_map=np.ones((2, 1, 1, 1)))


def test_a_robust_budget_range_ignores_a_few_bright_values():
    rng = np.random.default_rng(0)
    data = rng.normal(300.0, 50.0, size=(1, 20, 30, 30))
    data[0, 0, 0, :5] = 30000.0  # a few bright voxels (a marker, a metal clip)
    plain = IntensityMapping.for_data(data, -32768, 32767, 1.0)
    robust = IntensityMapping.for_data(data, -32768, 32767, 1.0, robust=True)
    assert plain.budget_scale == plain.scale == pytest.approx(data.max() - data.min())
    assert robust.scale == plain.scale  # every value still maps inside [0, 1]
    lo, hi = np.percentile(data, [0.5, 99.5])
    assert robust.budget_scale == pytest.approx(hi - lo, rel=0.02) and robust.budget_scale < plain.scale / 50
    assert robust.as_dict()["budget_basis"] == "p0.5-p99.5" and "budget_range" not in plain.as_dict()
    with pytest.raises(ConfigError, match="budget_range"):
        IntensityMapping(0, 10, 0, 10, budget_range=20)


def test_record_keeps_quantise_perturbation_where_callers_found_it():
    assert quantise_perturbation is quantise.quantise_perturbation  # moved to ulmed/io/quantise.py


@pytest.mark.parametrize("piece", [5000, 130, 1])  # boxes of one slice, of two rows, of one position
def test_slab_by_slab_gives_the_values_of_the_whole_volume(monkeypatch, piece):
    """with_perturbation and to_unit run in pieces of PIECE_VALUES; the values equal one piece's."""
    import ulmed.io.record as record

    rng = np.random.default_rng(3)
    steps = rng.choice([1.0, 0.5, 0.25], size=9)[None, :, None, None]  # a RescaleSlope per slice
    img = rng.integers(0, 4000, size=(1, 9, 70, 60)) * steps - 1024
    m = IntensityMapping(low=-1024.0, high=1000.0, valid_min=-1024.0, valid_max=3071.0, quantum=1.0)
    rec = Record("s", img, m, 3, "dicom", quantum_map=steps)
    delta = rng.uniform(-0.02, 0.02, size=img.shape).astype(np.float32)
    monkeypatch.setattr(record, "PIECE_VALUES", piece)
    pieces = rec.with_perturbation(delta, 30.0, clip=0.01).image, m.to_unit(img), m.to_unit(img, np.float64)
    monkeypatch.setattr(record, "PIECE_VALUES", 1 << 30)
    whole = rec.with_perturbation(np.clip(delta.astype(np.float64), -0.01, 0.01), 30.0).image
    assert np.array_equal(pieces[0], whole) and not np.array_equal(whole, img)
    assert np.array_equal(pieces[1], m.to_unit(img)) and np.array_equal(pieces[2], m.to_unit(img, np.float64))
    assert pieces[1].dtype == np.float32 and pieces[2].dtype == np.float64


@pytest.mark.parametrize(("shape", "values"), [((1, 9, 70, 60), 5000), ((3, 70, 60), 130), ((2, 5, 7), 1),
                                               ((1, 4, 6, 8), 10**6), ((2, 3), 4)])
def test_slabs_cover_every_position_once_within_the_size(shape, values):
    from ulmed.io.record import slabs

    seen = np.zeros(shape, dtype=int)
    boxes = slabs(shape, values)
    for box in boxes:
        seen[box] += 1
        assert seen[box].size <= max(values, shape[0])  # all channels of one position at the least
    assert (seen == 1).all()
    if values >= np.prod(shape):
        assert len(boxes) == 1  # an array that fits is one box, not one per row


def test_whole_steps_give_int32_values_and_fractional_steps_float64():
    """An integer image perturbed by whole steps is int32 (exact, half of float64's memory, no uint8 wrap)."""
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, size=(1, 12, 16)).astype(np.uint8)
    m = IntensityMapping(low=0.0, high=255.0, valid_min=0.0, valid_max=255.0, quantum=1.0)
    delta = rng.uniform(-0.03, 0.03, size=img.shape).astype(np.float32)
    out = Record("a", img, m, 2, "image").with_perturbation(delta, 8.0, clip=8 / 255).image
    ref = Record("a", img.astype(np.float64), m, 2, "image").with_perturbation(delta, 8.0, clip=8 / 255).image
    assert out.dtype == np.int32 and ref.dtype == np.float64 and np.array_equal(out, ref)
    assert (out - img).min() < 0  # a difference below zero, not wrapped around to 255
    half = IntensityMapping(low=-10.0, high=10.0, valid_min=-10.0, valid_max=10.0, quantum=0.5)
    small = np.arange(-8, 8, dtype=np.int16).reshape(1, 4, 4)
    assert Record("b", small, half, 2, "image").with_perturbation(np.full((1, 4, 4), 0.02)).image.dtype == np.float64


@pytest.mark.parametrize("per_slice", [False, True])
def test_a_sparse_perturbation_gives_the_values_of_the_dense_path(monkeypatch, per_slice):
    """Few moved positions (a code on a volume's labels) are computed alone; every value equals the dense path's."""
    import ulmed.io.record as record

    rng = np.random.default_rng(5)
    steps = rng.choice([1.0, 0.5], size=6)[None, :, None, None] if per_slice else None
    img = rng.integers(0, 4000, size=(1, 6, 20, 30)) * (1.0 if steps is None else steps) - 1024
    m = IntensityMapping(low=-1024.0, high=3000.0, valid_min=-1024.0, valid_max=3071.0, quantum=1.0)
    rec = Record("s", img, m, 3, "dicom", quantum_map=steps)
    delta = np.zeros(img.shape, np.float32)
    moved = rng.random(img.shape) < 0.05
    delta[moved] = rng.uniform(-0.02, 0.02, size=int(moved.sum()))
    assert rec._sparse(delta) is not None  # the sparse path is taken
    sparse = rec.with_perturbation(delta, 30.0, clip=0.01).image
    monkeypatch.setattr(record, "SPARSE_SHARE", -1.0)
    dense = rec.with_perturbation(delta, 30.0, clip=0.01).image
    assert sparse.dtype == dense.dtype and np.array_equal(sparse, dense)
    assert np.array_equal(sparse[~moved], img[~moved]) and not np.array_equal(sparse[moved], img[moved])


def test_values_outside_the_mapping_keep_the_dense_path():
    """Where the image leaves the mapping's range a zero change is not exact (clipping moves it): no sparse path."""
    img = np.array([[[0.0, 50.0], [100.0, 300.0]]])
    rec = Record("a", img, IntensityMapping(0.0, 255.0, 0.0, 255.0, 1.0), 2, "image")
    delta = np.zeros(img.shape, np.float32)
    assert rec._sparse(delta) is None
    assert rec.with_perturbation(delta, 8.0).image[0, 1, 1] == 292.0  # moved toward the range, by the budget

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


def test_random_noise_projects_onto_an_l2_budget():
    rec = _record()
    out = RandomNoise("l2:0.5", seed=0).protect(rec)
    norm = np.linalg.norm(out.image - rec.image.astype(np.float64))
    assert 0.9 * 0.5 * 255 < norm <= 0.5 * 255  # the L2 ball, not the L-inf cube of radius 0.5


def test_lsp_refuses_an_l2_budget():
    from ulmed.baselines import MaskCodedPatterns

    with pytest.raises(ConfigError, match="'lsp' does not support L2 budgets such as 'l2:0.5'"):
        MaskCodedPatterns("l2:0.5")


@pytest.mark.parametrize(("name", "options"), [("em", {}), ("em", {"tile_size": 16}), ("salm", {"rho": 0.1})])
def test_optimised_methods_run_pgd_inside_the_l2_ball(hc18_train_records, name, options):
    """EM and SALM take normalised-gradient steps and project onto each record's L2 ball (tiles share it)."""
    import ulmed.baselines.em  # noqa: F401 - registers em
    import ulmed.medical.salm  # noqa: F401 - registers salm

    records = hc18_train_records(32, 4)
    method = METHODS.get(name)("l2:0.5", seed=0, device="cpu", rounds=1, train_steps=2, pgd_steps=3, **options)
    method.fit(records)
    for rec in records:
        raw = method.perturbation(rec, rec.unit_image(), 0.5)
        assert np.linalg.norm(raw) <= 0.5 * (1 + 1e-6)  # the PGD core's own projection was L2
        change = method.protect(rec).image - rec.image
        assert 0 < np.linalg.norm(change) <= 0.5 * 255
        if name == "salm":
            assert np.count_nonzero(raw) <= np.ceil(0.1 * 32 * 32)


def test_protect_many_defaults_to_protect_on_each_record():
    records = [_record("a.png"), _record("b.png")]
    m = RandomNoise("8/255", seed=2)
    assert m.batch_hint == 1  # the pipeline hands it one record at a time
    many = m.protect_many(records)
    assert [r.key for r in many] == ["a.png", "b.png"]
    for got, rec in zip(many, records):
        assert np.array_equal(got.image, m.protect(rec).image)


def test_apply_refuses_a_perturbation_of_another_shape():
    rec = _record()
    with pytest.raises(ConfigError, match="shape"):
        RandomNoise("8/255").apply(rec, np.zeros((1, 3, 3)), 8 / 255)

import pytest

from ulmed.core.budget import Budget
from ulmed.errors import ConfigError
from ulmed.io.record import IntensityMapping

CT = IntensityMapping(low=-1024, high=3071, valid_min=-32768, valid_max=32767, quantum=1, unit="HU")
PNG = IntensityMapping(low=0, high=255, valid_min=0, valid_max=255, quantum=1)


@pytest.mark.parametrize(("spec", "value"), [("8/255", 8 / 255), ("0.03", 0.03), (0.05, 0.05), ("1e-2", 0.01)])
def test_unit_budgets_parse(spec, value):
    b = Budget.parse(spec)
    assert b.native_unit is None
    assert b.in_unit(PNG) == pytest.approx(value)


def test_native_budget_converts_per_record():
    b = Budget.parse("20HU")
    assert b.native_unit == "HU"
    assert b.in_unit(CT) == pytest.approx(20 / 4095)
    d = b.describe(CT)
    assert d["eps_native"] == pytest.approx(20.0)
    assert d["native_unit"] == "HU"


def test_native_budget_in_wrong_unit_is_refused():
    with pytest.raises(ConfigError, match="HU"):
        Budget.parse("20HU").in_unit(PNG)


def test_unit_budget_describes_native_size():
    d = Budget.parse("8/255").describe(PNG)
    assert d["eps_native"] == pytest.approx(8.0)


@pytest.mark.parametrize("spec", ["abc", "8/0", "-1", "2", "0", "8/255/3"])
def test_bad_budgets_are_refused(spec):
    with pytest.raises(ConfigError):
        Budget.parse(spec)


@pytest.mark.parametrize(
    ("spec", "value", "unit"),
    [("l2:0.5", 0.5, None), ("L2: 3", 3.0, None), ("l2:40HU", 40.0, "HU"), ("linf:8/255", 8 / 255, None)],
)
def test_norm_prefixed_budgets_parse(spec, value, unit):
    b = Budget.parse(spec)
    assert b.norm == ("l2" if spec.lower().startswith("l2") else "linf")
    assert b.value == pytest.approx(value) and b.native_unit == unit
    assert Budget.parse("8/255").norm == "linf"


def test_l2_budget_may_exceed_one_but_linf_may_not():
    assert Budget.parse("l2:3").describe(PNG)["norm"] == "l2"
    assert Budget.parse("l2:40HU").in_unit(CT) == pytest.approx(40 / 4095)
    with pytest.raises(ConfigError):
        Budget.parse("linf:3")
    with pytest.raises(ConfigError):
        Budget.parse("l3:0.5")


def test_native_size_is_exact_and_a_whole_number_of_steps_when_it_is_one():
    assert Budget.parse("8/255").in_native(PNG) == 8.0  # not 7.999...: 8 levels may be used
    assert Budget.parse("20HU").describe(CT)["eps_native"] == 20.0  # as given, not 20 / 4095 * 4095
    assert Budget.parse("0.022").in_native(PNG) == pytest.approx(5.61)
    assert Budget.parse("l2:0.5").label == "L2 0.5" and Budget.parse("8/255").label == "Linf 8/255"


def test_budget_below_one_stored_step_is_flagged():
    import numpy as np

    from ulmed.io.record import Record

    ct = Record("ct", np.zeros((1, 4, 4), dtype=np.int32), CT, 2, "dicom")
    assert "smaller than one stored step (1 HU)" in Budget.parse("0.1HU").too_small(ct)
    assert Budget.parse("1HU").too_small(ct) is None and Budget.parse("8/255").too_small(ct) is None
    png = Record("png", np.zeros((1, 4, 4), dtype=np.uint8), PNG, 2, "image")
    assert Budget.parse("1/1000").too_small(png) is not None and Budget.parse("l2:0.5/255").too_small(png) is not None
    floats = Record("f", np.zeros((1, 4, 4), dtype=np.float32), IntensityMapping(0, 1, 0, 1, 0.0), 2, "array")
    assert Budget.parse("1/1000").too_small(floats) is None  # float storage has no step


def test_a_unit_budget_is_a_share_of_the_robust_range_and_the_manifest_says_so():
    mapping = IntensityMapping(0.0, 4095.0, 0.0, 4095.0, 1.0, budget_range=510.0, budget_basis="p0.5-p99.5")
    budget = Budget.parse("8/255")
    assert budget.in_native(mapping) == pytest.approx(16.0)  # 8/255 of the 510-wide robust range
    assert budget.in_unit(mapping) == pytest.approx(16.0 / 4095.0)
    described = budget.describe(mapping)
    assert described["scale"] == "p0.5-p99.5" and described["scale_native"] == 510.0
    assert Budget.parse("20value").in_native(mapping) == 20.0  # native budgets are their own value


def test_auto_is_8_of_255_at_38_db_on_images_and_16_of_255_at_40_db_on_a_robust_range():
    import dataclasses

    b = Budget.parse(" Auto ")
    assert b == Budget.auto() and b.spec == "auto" and b.norm == "linf"
    assert b.in_unit(PNG) == pytest.approx(8 / 255) and b.in_native(PNG) == 8.0
    assert b.psnr_floor(PNG) == 38.0 and b.describe(PNG)["psnr_floor"] == 38.0
    robust = dataclasses.replace(CT, budget_range=800.0, budget_basis="p0.5-p99.5")
    assert b.in_native(robust) == pytest.approx(16 / 255 * 800)
    assert b.in_unit(robust) == pytest.approx(16 / 255 * 800 / 4095)
    assert b.psnr_floor(robust) == 40.0 and b.describe(robust)["psnr_floor"] == 40.0
    assert b.label == "Linf 8/255 at >= 38 dB, DICOM/NIfTI 16/255 at >= 40 dB"
    # a budget the user states is the same on every kind, with no floor
    plain = Budget.parse("8/255")
    assert plain.in_native(robust) == pytest.approx(8 / 255 * 800) and plain.psnr_floor(robust) is None
    assert plain.psnr_floor(PNG) is None and "psnr_floor" not in plain.describe(PNG)
    assert Budget(8 / 255, image_psnr=38.0).label == "Linf 8/255 at >= 38 dB, DICOM/NIfTI 8/255"  # a floor is stated


@pytest.mark.parametrize(("field", "bad"), [("robust_value", 1.5), ("robust_value", 0.0), ("robust_psnr", -1.0),
                                         ("image_psnr", 0.0), ("image_psnr", 250.0)])
def test_a_bad_robust_budget_is_refused(field, bad):
    with pytest.raises(ConfigError, match="robust|PSNR"):
        Budget(8 / 255, **{field: bad})


def test_psnr_share_brings_the_rms_down_to_the_floor_and_no_further():
    import numpy as np

    from ulmed.core.budget import psnr_share

    code = np.where(np.arange(1000) % 3 == 0, 0.05, 0.0).astype(np.float32)  # rms 0.05 / sqrt(3)
    share = psnr_share(code, 40.0, 1.0)
    assert share == pytest.approx(0.01 / (0.05 / np.sqrt(1000 / 334)), rel=1e-6)
    assert 20 * np.log10(1.0 / np.sqrt(np.mean((code * share) ** 2))) == pytest.approx(40.0)
    assert psnr_share(code, 20.0, 1.0) == 1.0  # already quieter than the floor
    assert psnr_share(code, 40.0, 0.5) == pytest.approx(share / 2)  # against a narrower range

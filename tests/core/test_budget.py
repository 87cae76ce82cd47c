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

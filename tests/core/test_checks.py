import pytest

from ulmed.core.checks import check_count
from ulmed.errors import ConfigError


def test_check_count_returns_valid_integers():
    assert check_count("steps", 0, 0) == 0
    assert check_count("steps", 5, 1) == 5


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "2", None])
def test_check_count_refuses_non_integers_bools_and_small_values(value):
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        check_count("steps", value, 1)

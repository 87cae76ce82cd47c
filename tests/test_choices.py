import pytest

from ulmed.choices import StrEnum, look_up, names
from ulmed.errors import ConfigError


class Colour(StrEnum):
    RED = "red"
    GREEN = "green"


def test_look_up_takes_a_member_or_its_value_in_any_case():
    assert look_up("RED", Colour, "colour") is Colour.RED
    assert look_up(Colour.GREEN, Colour, "colour") is Colour.GREEN
    assert names(Colour) == ("red", "green")


def test_an_unknown_value_is_one_line_naming_the_option_and_the_choices():
    with pytest.raises(ConfigError) as info:
        look_up("blue", Colour, "colour")
    message = str(info.value)
    assert message.startswith("colour:") and "red" in message and "green" in message and "\n" not in message

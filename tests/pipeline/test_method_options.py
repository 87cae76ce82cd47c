"""Method options checked against the method class's constructor signature and annotations."""

from __future__ import annotations

import pytest

from ulmed.errors import ConfigError
from ulmed.pipeline.method_options import check_method_options, constructor_parameters, describe_type


def test_keys_come_from_the_constructor_chain():
    from ulmed.pipeline.protect import method_class

    keys = constructor_parameters(method_class("salm"))
    assert {"rho", "every", "rounds", "lr", "tile_size", "budget", "seed"} <= set(keys)
    assert "args" not in keys and "kwargs" not in keys and "self" not in keys
    assert keys["rho"] is float


def test_values_are_converted_to_the_annotated_types():
    out = check_method_options("em", {"lr": "1e-3", "rounds": 2, "tile_size": [4, "4"], "amp": True, "step_size": None})
    assert out == {"lr": 0.001, "rounds": 2, "tile_size": [4, 4], "amp": True, "step_size": None}
    assert check_method_options("unseg", {"eps_bg": 0.01, "generator": "g.pt"}) == {"eps_bg": 0.01, "generator": "g.pt"}


@pytest.mark.parametrize("method, options, message", [
    ("lsp", {"tile": "abc"}, "tile wants an integer, got 'abc'"),
    ("lsp", {"tile": True}, "tile wants an integer, got True"),
    ("em", {"amp": "maybe"}, "amp wants true or false, got 'maybe'"),
    ("em", {"tile_size": "big"}, "tile_size wants a list of integers such as [1, 2] or an integer or null, got 'big'"),
    ("random", {"tile": 4}, "method 'random' has no option 'tile'; it takes no --set options"),
    ("em", {"seed": 5}, "seed is a global option: use --seed 5"),
])
def test_bad_options_are_one_clear_message(method, options, message):
    with pytest.raises(ConfigError) as info:
        check_method_options(method, options)
    assert str(info.value) == message


def test_describe_type():
    assert describe_type(int | None) == "an integer or null"
    assert describe_type(str) == "a string"

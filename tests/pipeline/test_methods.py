"""Methods by name: each known name has its module, and a build names what is wrong."""

from __future__ import annotations

import pytest

from ulmed.core.method import METHODS
from ulmed.errors import ConfigError
from ulmed.pipeline.methods import METHOD_MODULES, available_methods, build_method, method_class


def test_every_registered_method_names_its_module_and_a_summary():
    listed = available_methods()
    assert set(listed) == set(METHOD_MODULES) == set(METHODS.names())
    assert all(doc and "\n" not in doc for doc in listed.values())
    for name, module in METHOD_MODULES.items():
        assert method_class(name).__module__ == module


def test_build_method_sets_the_budget_and_seed():
    method = build_method("random", "4/255", seed=7, device="cpu")
    assert method.budget.label == "Linf 4/255" and method.params()["seed"] == 7


def test_build_method_names_an_option_the_method_does_not_take():
    with pytest.raises(ConfigError, match=r"method 'random' does not take these options \['rho'\]"):
        build_method("random", "8/255", 0, "cpu", rho=0.1)

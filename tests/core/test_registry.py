"""The name -> class registry: register, look up, list, refuse duplicates and unknown names."""

import pytest

from ulmed.core.registry import Registry
from ulmed.errors import ConfigError


def test_register_get_and_list():
    reg: Registry[type] = Registry("widget")

    @reg.register("b")
    class B: ...

    @reg.register("a")
    class A: ...

    assert reg.get("a") is A and reg.get("b") is B
    assert reg.names() == ["a", "b"] and "a" in reg and "c" not in reg
    assert reg.register("a")(A) is A  # registering the same object again is harmless


def test_duplicates_and_unknown_names_are_refused():
    reg: Registry[type] = Registry("widget")
    reg.register("a")(int)
    with pytest.raises(ConfigError, match="widget 'a' is registered twice"):
        reg.register("a")(str)
    with pytest.raises(ConfigError, match="unknown widget 'z'; choose one of: a"):
        reg.get("z")

"""Method options (``--set KEY=VALUE``, a config's ``options:``) checked against the method.

The valid keys and the type each one wants are read from the method class's constructor:
its keyword parameters and their annotations, and those of its bases for as long as an
``__init__`` passes ``**kwargs`` on. A new constructor argument is therefore a valid key
at once, with no hand-kept list to fall out of step.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ulmed.errors import ConfigError

#: Constructor arguments that other options set; ``--set`` names the option to use instead.
ELSEWHERE = {
    "seed": "seed is a global option: use --seed {value}",
    "device": "device is a global option: use --device {value}",
    "budget": "the budget is its own option: use --eps {value}",
    "eps": "eps is its own option: use --eps {value}",
}

_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings"), Path: ("a path", "paths"), type(None): ("null", "nulls")}


def constructor_parameters(cls: type) -> dict[str, Any]:
    """Keyword parameters of ``cls``'s constructor, with their resolved annotations.

    Args:
        cls: A class whose ``__init__`` chain ends in plain keyword parameters.

    Returns:
        Parameter name -> annotation (``typing.Any`` where there is none or it cannot be
        resolved), in the order of the signatures.
    """
    params: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        hints = _hints(init)
        passes_on = False
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                passes_on = True
            elif p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(p.name, hints.get(p.name, Any))
        if not passes_on:
            break
    return params


def _hints(func: Any) -> dict[str, Any]:
    """``typing.get_type_hints`` of ``func``, or none when an annotation cannot be resolved."""
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - a name only imported for type checkers: accept any value
        return {}


def check_method_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check method options against the constructor of ``method`` and convert their values.

    Args:
        method: A registered method name.
        options: Option name -> value as read from YAML (``"1e-3"`` may still be text).

    Returns:
        The options with values converted to the annotated types (``"1e-3"`` -> ``0.001``).

    Raises:
        ConfigError: The method is unknown, a key is set elsewhere (seed, device, budget),
            is not a parameter of the method, or its value has the wrong type.
    """
    from ulmed.pipeline.methods import method_class

    params = constructor_parameters(method_class(method))
    valid = [k for k in params if k not in ELSEWHERE]
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in ELSEWHERE:
            raise ConfigError(ELSEWHERE[key].format(value=value))
        if key not in valid:
            keys = f"valid --set keys: {', '.join(sorted(valid))}" if valid else "it takes no --set options"
            raise ConfigError(f"method {method!r} has no option {key!r}; {keys}")
        ok, converted = _convert(params[key], value)
        if not ok:
            raise ConfigError(f"{key} wants {describe_type(params[key])}, got {value!r}")
        out[key] = converted
    return out


def _members(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation, or the annotation alone."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _convert(annotation: Any, value: Any, passes: tuple[bool, ...] = (True, False)) -> tuple[bool, Any]:
    """Whether ``value`` fits ``annotation``, and the value converted to it.

    A value that already has one of the union's types is kept as it is (the strict pass);
    only then is text read as a number (YAML reads ``1e-3`` as text) or a number taken as text.
    """
    members = _members(annotation)
    for strict in passes:
        for member in members:
            ok, converted = _convert_one(member, value, strict)
            if ok:
                return True, converted
    return False, value


def _convert_one(tp: Any, value: Any, strict: bool) -> tuple[bool, Any]:
    """:func:`_convert` for one member of a union."""
    if tp is Any or tp is inspect.Parameter.empty:
        return True, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp in (int, float):
        return _number(tp, value, strict)
    if tp in (str, Path):
        if isinstance(value, str):
            return True, value
        return (not strict and isinstance(value, (int, float)) and not isinstance(value, bool)), str(value)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return isinstance(value, Mapping), value
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str:
        return _sequence(tp, value, strict)
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value  # a form this check does not know: the constructor validates it


def _number(tp: type, value: Any, strict: bool) -> tuple[bool, Any]:
    """An int or float from a number (or, when not ``strict``, from text such as ``1e-3``)."""
    if isinstance(value, bool):
        return False, value
    if isinstance(value, int) or (tp is float and isinstance(value, float)):
        return True, value  # an int is a valid float (kept as given, as the run's parameters record it)
    if not strict and isinstance(value, str):
        try:
            return True, tp(value.strip())
        except ValueError:
            return False, value
    return False, value


def _sequence(tp: Any, value: Any, strict: bool) -> tuple[bool, Any]:
    """A list whose items all fit the sequence's item type."""
    if not isinstance(value, (list, tuple)):
        return False, value
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    item = args[0] if len(args) == 1 or (args and all(a == args[0] for a in args)) else Any
    converted = []
    for v in value:
        ok, c = _convert(item, v, (True,) if strict else (True, False))
        if not ok:
            return False, value
        converted.append(c)
    return True, converted


def describe_type(annotation: Any) -> str:
    """``int | None`` -> ``"an integer or null"``: what a value must be, in words."""
    words = []
    for member in _members(annotation):
        origin = typing.get_origin(member)
        if member in _NAMES:
            words.append(_NAMES[member][0])
        elif origin is typing.Literal:
            words.append("one of " + ", ".join(map(repr, typing.get_args(member))))
        elif isinstance(origin, type) and issubclass(origin, Mapping):
            words.append("a mapping such as {key: value}")
        elif isinstance(origin, type) and issubclass(origin, Sequence):
            args = typing.get_args(member)
            plural = _NAMES.get(args[0], (None, "values"))[1] if args else "values"
            numbers = plural in ("integers", "numbers")
            words.append(f"a list of {plural} such as [1, 2]" if numbers else f"a list of {plural}")
        elif isinstance(member, type):
            words.append(f"a {member.__name__}")
        else:
            words.append(str(member))
    return " or ".join(dict.fromkeys(words))


__all__ = ["ELSEWHERE", "check_method_options", "constructor_parameters", "describe_type"]

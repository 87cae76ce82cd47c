"""Reading option values that typer cannot: a YAML config, ``KEY=VALUE`` and ``NAME=PATH`` lists, sizes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from ulmed.errors import ConfigError


def apply_config(ctx: typer.Context, config: Path | None, values: dict[str, object]) -> dict[str, object]:
    """Fill options the user did not give on the command line from a YAML config file.

    Args:
        ctx: The command's context (tells a typed flag from a default).
        config: The ``--config`` file, or None.
        values: Option name -> the value typer read; the names a config may set.

    Returns:
        ``values``, with the config's values where no flag was given.
    """
    if config is None:
        return values
    from ulmed.pipeline.config import load_config

    data = load_config(config, allowed=set(values))
    for key, value in data.items():
        source = ctx.get_parameter_source(key)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            values[key] = value
    return values


def parse_sets(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings to a dict; values are read as YAML scalars (numbers, booleans)."""
    out: dict[str, object] = {}
    if not items:
        return out
    import yaml

    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def method_options(method: str, configured: Mapping[str, Any], sets: list[str],
                   flags: Mapping[str, Any]) -> dict[str, Any]:
    """The method's options: the config's ``options:``, then ``--set``, then the named flags given.

    Args:
        method: The method name.
        configured: The config file's ``options:`` mapping.
        sets: The ``--set KEY=VALUE`` words.
        flags: Named method flags (``rho``, ``augment`` ...); None means not given.

    Returns:
        The options, checked against the method's constructor and converted.
    """
    from ulmed.pipeline.method_options import check_method_options

    options = {**configured, **parse_sets(sets)}
    options.update({key: value for key, value in flags.items() if value is not None})
    return check_method_options(method, options)


def parse_protected(items: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` (or a bare PATH, named after its folder) to a dict."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name.strip(), path.strip()) if sep else (Path(item).name, item)
        if not name or not path:
            raise ConfigError(f"--protected needs NAME=PATH, got {item!r}")
        if name in out:
            raise ConfigError(f"--protected name {name!r} is given twice; use distinct names")
        out[name] = Path(path)
    return out


def parse_sizes(text: str, what: str) -> tuple[int, ...]:
    """``"24,32,24"`` or ``"24x32x24"`` -> integers; a ConfigError starting with ``what`` otherwise."""
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"{what}, got {text!r}") from None


__all__ = ["apply_config", "method_options", "parse_protected", "parse_sets", "parse_sizes"]

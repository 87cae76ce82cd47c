"""YAML configuration files for runs (``--config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ulmed.errors import ConfigError


def load_config(path: str | Path, allowed: set[str]) -> dict[str, Any]:
    """Read a flat YAML mapping of option names to values.

    Args:
        path: The YAML file.
        allowed: Option names the command accepts; others are refused.

    Raises:
        ConfigError: The file is missing, not a mapping, or names an unknown option.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError("config file not found; check --config", path) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"is not valid YAML ({exc.__class__.__name__}); fix the file", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("must be a mapping of option names to values", path)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}", path)
    if "options" in data and not isinstance(data["options"], dict):
        raise ConfigError("'options' must be a mapping of method options (e.g. rho: 0.1)", path)
    return {k: str(v) if k == "eps" else v for k, v in data.items()}

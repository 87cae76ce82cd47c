"""Protection methods by name: import only the chosen method's module, then build it.

Each method registers itself in :data:`ulmed.core.method.METHODS` when its module is
imported. :data:`METHOD_MODULES` names that module, so a training-free method (lsp, random)
runs without loading torch or MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

from ulmed.core.budget import Budget
from ulmed.core.method import METHODS, ProtectionMethod
from ulmed.errors import ConfigError

#: The module in which each method registers itself. Only the chosen method's module is
#: imported, so training-free methods (lsp, random) run without loading torch or MONAI.
METHOD_MODULES = {
    "none": "ulmed.baselines.random_noise",
    "random": "ulmed.baselines.random_noise",
    "lsp": "ulmed.baselines.lsp",
    "em": "ulmed.baselines.em",
    "salm": "ulmed.medical.salm",
    "unseg": "ulmed.segmentation.method",
}


def _register_methods() -> None:
    """Import every module that registers a method."""
    for module in sorted(set(METHOD_MODULES.values())):
        importlib.import_module(module)


def method_class(name: str) -> type[ProtectionMethod]:
    """The class of a method, importing only its own module when it is a known one."""
    if name not in METHODS:
        if name in METHOD_MODULES:
            importlib.import_module(METHOD_MODULES[name])
        else:
            _register_methods()
    return METHODS.get(name)


def available_methods() -> dict[str, str]:
    """Registered method names with the first line of their docstring."""
    _register_methods()
    return {name: (METHODS.get(name).__doc__ or "").strip().splitlines()[0] for name in METHODS.names()}


def build_method(name: str, eps: str | float, seed: int, device: str, **options: Any) -> ProtectionMethod:
    """Instantiate a registered method by name.

    Args:
        name: The method's registered name (``ulmed methods`` lists them).
        eps: Its budget (``"8/255"``, ``"20HU"``, ``"l2:0.5"``).
        seed: The run seed.
        device: Torch device for methods that use one.
        **options: Keyword arguments of the method's constructor (``rho`` ...).

    Raises:
        ConfigError: The method is unknown, does not support the budget's norm, or does not
            take one of ``options``.
    """
    cls = method_class(name)
    if Budget.parse(eps).norm not in cls.norms:
        _register_methods()  # the constructor's refusal then names every method that supports the norm
    try:
        return cls(budget=eps, seed=seed, device=device, **options)
    except TypeError as exc:  # an option the method does not take
        raise ConfigError(f"method {name!r} does not take these options {sorted(options)}: {exc}") from None


__all__ = ["METHOD_MODULES", "available_methods", "build_method", "method_class"]

"""A small name -> class registry (methods, victims, generator builders)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from ulmed.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or builder functions.

    Args:
        kind: What is registered (used in error messages), e.g. ``"method"``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name`` (names are unique)."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the entry called ``name``; unknown names list what exists."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

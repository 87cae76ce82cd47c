"""Deterministic split of a run's work into parts (Slurm arrays, Kubernetes jobs).

A unit of work (a DICOM series, a volume, an image, a file to copy) goes to part
``sha256(key) mod N``. The assignment depends only on the key and ``N``, never on the order
in which files were found or on the machine, so every part computes the same split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ulmed.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Part:
    """Which part of a sharded run this process does.

    Args:
        index: ``--part-id``, from 0 to ``count - 1``.
        count: ``--num-parts``.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"--num-parts must be a positive integer, got {self.count!r}")
        if not isinstance(self.index, int) or not 0 <= self.index < self.count:
            raise ConfigError(f"--part-id must lie in 0..{self.count - 1} for --num-parts {self.count}, "
                              f"got {self.index!r}")

    @property
    def suffix(self) -> str:
        """File-name tag of this part (``""`` for an unsharded run)."""
        return "" if self.count == 1 else f".part-{self.index}-of-{self.count}"

    def owns(self, key: str) -> bool:
        """True when the unit with this key belongs to this part."""
        return part_of(key, self.count) == self.index


def part_of(key: str, count: int) -> int:
    """The part (0..count-1) that a key belongs to."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") % count


def keys_digest(keys: Iterable[str]) -> str:
    """One hash of a set of keys (order-free), used to check that merged parts cover one inventory."""
    digest = hashlib.sha256()
    for key in sorted(keys):
        digest.update(key.encode() + b"\n")
    return digest.hexdigest()


def chunks(items: Sequence[T], size: int | None) -> list[list[T]]:
    """Consecutive chunks of at most ``size`` items (one chunk when ``size`` is None)."""
    if size is None:
        return [list(items)] if items else []
    if size < 1:
        raise ConfigError(f"chunk size must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]

"""The split of a run into parts: by key alone, the same on every machine (moved from test_sharding.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from ulmed.errors import ConfigError
from ulmed.pipeline.shard import Part, chunks, keys_digest, part_of


def test_part_validates_and_names_itself():
    assert Part().suffix == "" and Part(2, 3).suffix == ".part-2-of-3"
    for index, count in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(ConfigError, match="--part-id|--num-parts"):
            Part(index, count)


def test_part_of_is_deterministic_and_spreads_keys():
    keys = [f"images/{i:04d}.png" for i in range(3000)]
    parts = [part_of(k, 4) for k in keys]
    assert parts == [part_of(k, 4) for k in keys]
    assert all(650 < n < 850 for n in Counter(parts).values())
    assert keys_digest(keys) == keys_digest(reversed(keys)) != keys_digest(keys[1:])


def test_chunks():
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunks([1, 2, 3], None) == [[1, 2, 3]] and chunks([], None) == []
    with pytest.raises(ConfigError):
        chunks([1], 0)


def test_every_key_belongs_to_exactly_one_part():
    parts = [Part(k, 3) for k in range(3)]
    for key in ("series:1.2.3", "images/a.png", "copy:masks/a.png", "entry:bad.dcm"):
        assert [p.owns(key) for p in parts].count(True) == 1
        assert parts[part_of(key, 3)].owns(key)
    assert all(Part().owns(key) for key in ("a", "b"))  # one part owns everything

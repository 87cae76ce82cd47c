"""merge-manifests on hand-made part manifests: a complete split joins, a broken one is refused by name."""

from __future__ import annotations

import json

import pytest

from ulmed.errors import InputError
from ulmed.pipeline.merge import merge_manifests
from ulmed.pipeline.shard import keys_digest

KEYS = ["a.png", "b.png", "copy:masks/a.png"]


def _part(folder, index, units, entries, **params):
    data = {
        "versions": {"ulmed": "x"}, "params": {"method": "random", "seed": 0, "workers": index + 1, **params},
        "part": {"index": index, "count": 2, "inventory_units": len(KEYS), "inventory_sha256": keys_digest(KEYS),
                 "units": units},
        "run": {"units": len(units), "copies": 0, "seconds": 1.0}, "entries": entries,
    }
    (folder / f"manifest.part-{index}-of-2.json").write_text(json.dumps(data))


def _entry(name, **kw):
    return {"input": name, "status": "written", "output": name, "record": name, **kw}


def _split(folder, second_units=("b.png", "copy:masks/a.png"), **params):
    _part(folder, 0, ["a.png"], [_entry("a.png")])
    _part(folder, 1, list(second_units),
          [_entry("b.png"), {"input": "masks/a.png", "status": "copied", "output": "masks/a.png"}], **params)


def test_a_complete_split_joins_into_one_manifest(tmp_path):
    _split(tmp_path)
    merged = merge_manifests(tmp_path)
    assert [e.input for e in merged.entries] == ["a.png", "b.png", "masks/a.png"]
    assert merged.params == {"method": "random", "seed": 0, "output": "."}  # workers may differ per part
    assert merged.run["parts"] == 2 and merged.run["units"] == 3
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"]["written"] == 2


def test_a_missing_part_is_named(tmp_path):
    _split(tmp_path)
    (tmp_path / "manifest.part-1-of-2.json").unlink()
    with pytest.raises(InputError, match=r"part\(s\) \[1\] of 2 are missing"):
        merge_manifests(tmp_path)


def test_parts_run_with_other_parameters_are_refused(tmp_path):
    _split(tmp_path, seed=1)
    with pytest.raises(InputError, match=r"other parameters than part 0 \(seed\)"):
        merge_manifests(tmp_path)


def test_a_unit_no_part_did_is_refused(tmp_path):
    _split(tmp_path, second_units=("b.png",))
    with pytest.raises(InputError, match="the parts cover 2 of 3 units"):
        merge_manifests(tmp_path)


def test_a_folder_without_parts_is_refused(tmp_path):
    with pytest.raises(InputError, match="holds no part manifests"):
        merge_manifests(tmp_path)

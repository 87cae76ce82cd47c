"""Sharding: --num-parts/--part-id split the work exactly once; merge-manifests checks it."""

from __future__ import annotations

import json

import pytest

from tests.pipeline.test_resume import outputs
from ulmed.cli import main
from ulmed.errors import InputError
from ulmed.pipeline.merge import merge_manifests
from ulmed.pipeline.protect import protect_path


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, sample_data):
    root = tmp_path_factory.mktemp("shard")
    whole = protect_path(sample_data, root / "whole", method="random")
    parts = [protect_path(sample_data, root / "parts", method="random", num_parts=3, part_id=k) for k in range(3)]
    return root, whole, parts


def test_every_unit_is_done_by_exactly_one_part(sharded):
    root, whole, parts = sharded
    owned = [set(p.part["units"]) for p in parts]
    assert all(owned) and sum(map(len, owned)) == len(set().union(*owned)) == parts[0].part["inventory_units"]
    assert sorted(e.input for p in parts for e in p.entries) == sorted(e.input for e in whole.entries)
    for k in range(3):
        assert (root / f"parts/manifest.part-{k}-of-3.json").is_file()


def test_merged_parts_equal_the_unsharded_run(sharded):
    root, whole, _ = sharded
    merged = merge_manifests(root / "parts")
    assert merged.counts() == whole.counts()
    assert [e.input for e in merged.entries] == sorted(e.input for e in whole.entries)
    assert {e.input: e.sha256 for e in merged.entries} == {e.input: e.sha256 for e in whole.entries}
    assert outputs(root / "parts") == outputs(root / "whole")
    saved = json.loads((root / "parts/manifest.json").read_text())
    whole = json.loads((root / "whole/manifest.json").read_text())
    assert saved["run"]["parts"] == 3 and saved["counts"] == whole["counts"]


def test_merge_catches_a_missing_part(sharded, tmp_path, capsys):
    root, _, _ = sharded
    for k in (0, 2):
        name = f"manifest.part-{k}-of-3.json"
        (tmp_path / name).write_bytes((root / "parts" / name).read_bytes())
    with pytest.raises(InputError, match=r"\[1\] of 3 .*manifest.part-1-of-3.json.*--part-id"):
        merge_manifests(tmp_path)
    assert main(["merge-manifests", str(tmp_path)]) == 2
    assert "part(s) [1] of 3 are missing" in capsys.readouterr().err


def test_merge_catches_a_unit_done_twice_and_an_unfinished_part(sharded, tmp_path):
    root, _, _ = sharded
    data = [json.loads((root / f"parts/manifest.part-{k}-of-3.json").read_text()) for k in range(3)]
    twice = json.loads(json.dumps(data))
    twice[1]["part"]["units"].append(twice[0]["part"]["units"][0])
    for k, d in enumerate(twice):
        (tmp_path / f"manifest.part-{k}-of-3.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="was done by parts 0 and 1"):
        merge_manifests(tmp_path)
    short = json.loads(json.dumps(data))
    key = short[2]["part"]["units"][0]
    output = key.removeprefix("copy:")
    short[2]["entries"] = [e for e in short[2]["entries"] if e.get("record") != key and e.get("output") != output]
    for k, d in enumerate(short):
        (tmp_path / f"manifest.part-{k}-of-3.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="part 2 owned .* no entry"):
        merge_manifests(tmp_path)


def test_parts_with_other_parameters_are_refused(sample_data, tmp_path):
    protect_path(sample_data / "hc18", tmp_path / "o", method="random", num_parts=2, part_id=0)
    with pytest.raises(Exception, match="budget"):
        protect_path(sample_data / "hc18", tmp_path / "o", method="random", num_parts=2, part_id=1, eps="4/255")


def test_a_part_leaves_the_other_parts_temporaries_alone(sample_data, tmp_path):
    from ulmed.pipeline.shard import part_of

    out = tmp_path / "o"
    protect_path(sample_data / "hc18", out, method="random", num_parts=2, part_id=0)
    names = sorted(p.name for p in (sample_data / "hc18/images").glob("*.png"))
    theirs = next(n for n in names if part_of(f"images/{n}", 2) == 0)
    mine = next(n for n in names if part_of(f"images/{n}", 2) == 1)
    in_progress = out / "images" / f".{theirs}.ab12cd_3.part.png"  # part 0 still writing it
    stale = out / "images" / f".{mine}.zz98yx_1.part.png"  # part 1 was killed while writing it
    in_progress.write_bytes(b"x")
    stale.write_bytes(b"x")
    protect_path(sample_data / "hc18", out, method="random", num_parts=2, part_id=1)
    assert in_progress.exists() and not stale.exists()

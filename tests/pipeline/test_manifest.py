"""The manifest: entries with a known status, counts, and a saved file without local paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ulmed.errors import ConfigError
from ulmed.pipeline.manifest import STATUSES, Entry, Manifest, Status, library_versions, sha256_of


def test_an_entry_has_one_of_the_statuses():
    assert STATUSES == ("written", "copied", "skipped", "failed")
    with pytest.raises(ConfigError, match="manifest entry status: Unsupported option 'done'"):
        Entry("a.png", "done")
    entry = Entry("a.png", Status.COPIED)
    assert entry.status == "copied" and type(entry.status) is str  # written to JSON as plain text


def test_sha256_of_reads_a_file_in_chunks(tmp_path):
    data = bytes(range(256)) * 9000  # more than one 1 MiB chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_of(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_versions_name_python_ulmed_and_the_libraries():
    versions = library_versions()
    assert {"python", "ulmed", "numpy", "pydicom"} <= set(versions)


def test_save_writes_counts_and_entries_and_no_local_root(tmp_path):
    m = Manifest(params={"method": "random"}, entries=[Entry("a.png", "written", output="a.png"), Entry("b", "failed")])
    m.root, m.out = Path("/secret/input"), tmp_path
    m.run = {"units": 2}
    path = m.save(tmp_path, ".part-1-of-2")
    assert path.name == "manifest.part-1-of-2.json"
    data = Manifest.load(path)
    assert data["counts"] == {"written": 1, "copied": 0, "skipped": 0, "failed": 1}
    assert data["run"] == {"units": 2} and "part" not in data and "fit" not in data  # empty sections left out
    assert [e["input"] for e in data["entries"]] == ["a.png", "b"]
    assert "/secret/input" not in json.dumps(data)

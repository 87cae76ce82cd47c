"""Removing an earlier run's outputs: only files it wrote and that still hold what it wrote."""

from __future__ import annotations

import hashlib
import json

from ulmed.pipeline.cleanup import manifest_entries, remove_outputs
from ulmed.pipeline.manifest import Entry


def _written(out, rel, data):
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Entry(rel, "written", output=rel, sha256=hashlib.sha256(data).hexdigest())


def test_only_unchanged_outputs_are_removed_and_emptied_folders_pruned(tmp_path):
    out = tmp_path / "out"
    ours = _written(out, "deep/a/x.png", b"x")
    edited = _written(out, "b/y.png", b"y")
    (out / "b/y.png").write_bytes(b"the user changed it")
    kept = _written(out, "c/z.png", b"z")
    failed = Entry("d/w.png", "failed", output="c/z.png", sha256=kept.sha256)  # no output: never deleted
    assert remove_outputs(out, [ours, edited, kept, failed], keep={"c/z.png"}) == 1
    assert not (out / "deep").exists()  # deep/a/ and deep/ emptied: pruned
    assert (out / "b/y.png").read_bytes() == b"the user changed it"
    assert (out / "c/z.png").is_file() and out.is_dir()


def test_a_path_outside_the_output_is_never_touched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    outside = _written(tmp_path, "precious.txt", b"p")
    escaped = Entry("precious.txt", "copied", output="../precious.txt", sha256=outside.sha256)
    assert remove_outputs(out, [escaped]) == 0
    assert (tmp_path / "precious.txt").is_file()


def test_manifest_entries_reads_an_earlier_manifest_or_nothing(tmp_path):
    path = tmp_path / "manifest.json"
    assert manifest_entries(path) == []
    path.write_text(json.dumps({"entries": [{"input": "a.png", "status": "written", "output": "a.png"}]}))
    assert manifest_entries(path) == [Entry("a.png", "written", output="a.png")]
    path.write_text("{not json")
    assert manifest_entries(path) == []

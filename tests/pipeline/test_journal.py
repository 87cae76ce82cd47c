"""The run journal and run.json: what a rerun reads back to resume, and what it refuses."""

from __future__ import annotations

import json

import pytest

from ulmed.errors import OutputError
from ulmed.pipeline.journal import (
    CONTROL_DIR,
    RUN_FILE,
    Journal,
    check_run_identity,
    params_digest,
    remove_stale_temporaries,
)
from ulmed.pipeline.manifest import Entry


def _output(out, rel):
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_bytes(b"x")
    return Entry(rel, "written", output=rel, record=rel)


def test_a_journal_round_trip(tmp_path):
    journal = Journal(tmp_path, ".part-0-of-2")
    assert journal.path == tmp_path / CONTROL_DIR / "journal.part-0-of-2.jsonl"
    a, b = _output(tmp_path, "a.png"), _output(tmp_path, "b.png")
    journal.unit_done("a.png", [a], {"a.png": [1, 2, "d"]})
    journal.unit_done("b.png", [b])
    journal.chunk_done(0, {"rounds": 2})
    journal.unit_removed("b.png")
    state = journal.load(tmp_path)
    assert state.units == {"a.png": [a]} and state.stamps == {"a.png": {"a.png": [1, 2, "d"]}}
    assert state.chunks == {0: {"rounds": 2}} and state.lost == {}


def test_a_torn_last_line_is_dropped_and_cut_off(tmp_path):
    journal = Journal(tmp_path)
    journal.unit_done("a.png", [_output(tmp_path, "a.png")])
    whole = journal.path.stat().st_size
    with open(journal.path, "ab") as fh:
        fh.write(b'{"unit": "b.png", "entr')  # the run died while appending
    assert list(journal.load(tmp_path).units) == ["a.png"]
    assert journal.path.stat().st_size == whole


def test_a_unit_whose_output_was_deleted_is_lost_and_redone(tmp_path):
    journal = Journal(tmp_path)
    journal.unit_done("a.png", [_output(tmp_path, "a.png")])
    (tmp_path / "a.png").unlink()
    state = journal.load(tmp_path)
    assert state.units == {} and list(state.lost) == ["a.png"]
    journal.reset()
    assert not journal.path.exists()


def test_run_identity_resumes_the_same_parameters_and_refuses_others(tmp_path):
    assert check_run_identity(tmp_path, {"method": "random", "seed": 0}, overwrite=False) is False
    saved = json.loads((tmp_path / CONTROL_DIR / RUN_FILE).read_text())
    assert saved["params_sha256"] == params_digest({"seed": 0, "method": "random"})  # key order does not matter
    assert check_run_identity(tmp_path, {"method": "random", "seed": 0}, overwrite=False) is True
    with pytest.raises(OutputError, match=r"changed: seed\)"):
        check_run_identity(tmp_path, {"method": "random", "seed": 1}, overwrite=False)
    assert check_run_identity(tmp_path, {"method": "random", "seed": 1}, overwrite=True) is False
    assert check_run_identity(tmp_path, {"method": "random", "seed": 1}, overwrite=False) is True


def test_only_this_parts_temporaries_are_removed(tmp_path):
    (tmp_path / "img").mkdir()
    mine = tmp_path / "img/.a.png.Ab3dE6gH.part.png"
    theirs = tmp_path / "img/.b.png.Xy1zW2vU.part.png"
    for path in (mine, theirs, tmp_path / "img/a.png"):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path, {"img/a.png"}) == 1
    assert not mine.exists() and theirs.exists() and (tmp_path / "img/a.png").exists()


def test_lines_are_not_synced_one_by_one_but_the_journal_is_synced_once(tmp_path, monkeypatch):
    import os

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    journal = Journal(tmp_path)
    for name in ("a.png", "b.png", "c.png"):
        journal.unit_done(name, [_output(tmp_path, name)])
    assert synced == []
    journal.sync()
    assert len(synced) == 1 and set(journal.load(tmp_path).units) == {"a.png", "b.png", "c.png"}
    Journal(tmp_path, ".part-1-of-2").sync()  # no journal yet: nothing to sync, no error

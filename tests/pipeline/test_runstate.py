"""RunState: committing results to the journal, and taking over what an earlier run finished."""

from __future__ import annotations

import shutil

import pytest

from ulmed.errors import InputError
from ulmed.io.discover import discover
from ulmed.pipeline.journal import Journal
from ulmed.pipeline.manifest import Entry, sha256_of
from ulmed.pipeline.runstate import RunState
from ulmed.pipeline.shard import Part
from ulmed.pipeline.units import input_stamps, units_of
from ulmed.pipeline.work import UnitResult


@pytest.fixture
def run_parts(sample_data, tmp_path):
    src, out = tmp_path / "hc18", tmp_path / "out"
    shutil.copytree(sample_data / "hc18", src)
    out.mkdir()
    inv = discover(src)
    return inv, units_of(inv), out


def _done(unit, root, out):
    """The result of a unit that wrote its output (a stand-in file)."""
    (out / unit.key).parent.mkdir(parents=True, exist_ok=True)
    (out / unit.key).write_bytes(b"protected")
    entry = Entry(unit.key, "written", output=unit.key, record=unit.key, sha256=sha256_of(out / unit.key))
    return UnitResult(unit.key, [entry], stamps=input_stamps(unit, root))


def test_a_success_is_journalled_a_failure_counted_and_strict_raises(run_parts):
    inv, units, out = run_parts
    journal = Journal(out)
    run = RunState(out, Part(), journal, journal.load(out), strict=False, root=inv.root)
    run.commit(_done(units[0], inv.root, out))
    run.commit(UnitResult(units[1].key, [Entry(units[1].key, "failed", reason="bad")], error=("bad", units[1].key)))
    assert (run.new, run.failed) == (1, 1) and set(run.entries) == {units[0].key, units[1].key}
    assert list(journal.load(out).units) == [units[0].key]  # a failed unit is retried by the next run
    strict = RunState(out, Part(), journal, journal.load(out), strict=True, root=inv.root)
    with pytest.raises(InputError, match="bad"):
        strict.commit(UnitResult(units[1].key, [], error=("bad", units[1].key)))


def test_todo_takes_over_finished_units_and_redoes_changed_ones(run_parts):
    inv, units, out = run_parts
    journal = Journal(out)
    for unit in units[:2]:
        journal.unit_done(unit.key, *_parts(_done(unit, inv.root, out)))
    changed = inv.root / units[1].key
    changed.write_bytes(changed.read_bytes() + b"\0")  # its input changed since
    run = RunState(out, Part(), journal, journal.load(out), strict=False, root=inv.root)
    left = run.todo(units)
    assert [u.key for u in left] == [units[1].key, units[2].key]
    assert (run.resumed, run.changed) == (1, 1)
    assert run.entries[units[0].key][0].output == units[0].key
    assert not (out / units[1].key).exists()  # the stale output of the changed unit is gone
    assert run.state_path(2).name == "state.chunk-2.pt"


def _parts(result):
    return result.entries, result.stamps

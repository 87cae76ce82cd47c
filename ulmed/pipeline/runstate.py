"""Run bookkeeping and chunked fitting for :func:`ulmed.pipeline.protect.protect_path`.

:class:`RunState` commits unit results to the journal (a failed unit is recorded but not
journalled, so a rerun retries it) and takes over what an earlier run finished;
:func:`fit_in_chunks` runs methods that fit over the data set chunk by chunk with their
state saved in between, which is what makes a resumed chunked run byte-identical.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ulmed.errors import InputError, MissingDependencyError, OutputError
from ulmed.io.atomic import atomic_file
from ulmed.pipeline.cleanup import remove_outputs
from ulmed.pipeline.engines import EngineConfig, run_units
from ulmed.pipeline.journal import CONTROL_DIR, Journal, JournalState
from ulmed.pipeline.manifest import Entry
from ulmed.pipeline.shard import Part, chunks
from ulmed.pipeline.units import Unit, inputs_changed
from ulmed.pipeline.work import UnitResult, WorkContext, read_record

T = TypeVar("T")
#: ``progress(iterable, total, description)`` wraps a loop (the CLI passes a bar).
Progress = Callable[[Iterable[T], int, str], Iterable[T]]


class RunState:
    """Bookkeeping of one run of one part: the journal, the entries by unit, the counts.

    A unit that an earlier run finished is taken over only when its inputs are what they were
    then (:func:`ulmed.pipeline.units.inputs_changed`); a changed or grown unit is redone, and the
    outputs it wrote before are deleted first, so none of them can stay stale.

    Args:
        out: The output root.
        part: The part this run does.
        journal: Its journal.
        done: What an earlier run of the part finished (empty for a fresh run).
        strict: Raise at the first failed unit instead of recording it.
        root: The input root (the inputs' stamps are relative to it).
    """

    def __init__(self, out: Path, part: Part, journal: Journal, done: JournalState, strict: bool, root: Path) -> None:
        self.out, self.part, self.journal, self.done, self.strict, self.root = out, part, journal, done, strict, root
        self.entries: dict[str, list[Entry]] = {}
        self.new = self.resumed = self.failed = 0
        #: Records an earlier run finished whose inputs changed since (redone).
        self.changed = 0

    def commit(self, result: UnitResult) -> None:
        """Record one unit's result: journal it when it succeeded; raise in strict mode when it failed."""
        self.entries[result.key] = result.entries
        if result.error is not None:
            self.failed += 1
            if self.strict:
                raise InputError(*result.error)
            return
        self.journal.unit_done(result.key, result.entries, result.stamps)
        self.new += 1

    def is_current(self, unit: Unit) -> bool:
        """True when an earlier run finished ``unit`` from the inputs it has now."""
        return unit.key in self.done.units and not inputs_changed(unit, self.root, self.done.stamps.get(unit.key))

    def todo(self, units: list[Unit]) -> list[Unit]:
        """Units to do now; the entries of those an earlier run finished from the same inputs are taken over.

        A unit whose inputs changed, or whose outputs were partly deleted, is redone, and what
        it wrote before is removed first (a series that lost a slice keeps no output for it).
        """
        left = []
        for unit in units:
            if self.is_current(unit):
                self.entries[unit.key] = self.done.units[unit.key]
                self.resumed += unit.kind != "copy"  # records only, as in the closing line
                continue
            if unit.key in self.done.units:
                self.changed += unit.kind != "copy"
                remove_outputs(self.out, self.done.units.pop(unit.key))
            elif unit.key in self.done.lost:
                remove_outputs(self.out, self.done.lost.pop(unit.key))
            left.append(unit)
        return left

    def state_path(self, chunk: int) -> Path:
        """Where the method's state after fitting ``chunk`` is saved."""
        return self.out / CONTROL_DIR / f"state{self.part.suffix}.chunk-{chunk}.pt"


def _last_finished_chunk(run: RunState, parts: list[list[Unit]]) -> int:
    """The last chunk an earlier run finished (-1: none), after checking its chunks can be taken over.

    Raises:
        OutputError: The journal lists chunks out of order, or a finished chunk's outputs are
            missing or its inputs changed (its surrogate state is gone, so it cannot be refitted).
    """
    finished = [i for i in range(len(parts)) if i in run.done.chunks]
    last = max(finished, default=-1)
    if finished != list(range(last + 1)):
        raise OutputError(f"the run journal lists chunks {finished} as finished, out of order; "
                          "rerun with --overwrite", run.journal.path)
    for i in range(last + 1):
        if any(u.key not in run.done.units for u in parts[i]):
            raise OutputError(f"outputs of finished chunk {i} are missing, and its surrogate state is gone; "
                              "rerun with --overwrite", run.out)
        if not all(run.is_current(u) for u in parts[i]):
            raise OutputError(f"inputs of finished chunk {i} changed since it was fitted, "
                              "and its surrogate state is gone; rerun with --overwrite", run.out)
    return last


def fit_in_chunks(run: RunState, units: list[Unit], ctx: WorkContext, chunk_size: int | None,
                  progress: Progress) -> dict[str, Any]:
    """Fit and protect chunk by chunk in this process, saving the method's state after each.

    A resumed run skips the chunks its journal lists as finished, loads the state saved after
    the last of them, and refits the next one from there, so its output equals an
    uninterrupted run's. Every saved state is deleted at the end: the surrogate has learnt
    the clean data and must not be shared with the output.

    Returns:
        The fit report (one chunk: the method's report; more: ``{"chunks": [...]}``).
    """
    import torch

    method = ctx.method
    reports: list[dict[str, Any]] = []
    parts = chunks(units, chunk_size)
    last = _last_finished_chunk(run, parts)
    if last >= 0 and last + 1 < len(parts):
        state = run.state_path(last)
        if not state.is_file():
            raise OutputError("the saved surrogate of the last finished chunk is missing; rerun with --overwrite",
                              state)
        method.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
    for i, chunk in enumerate(parts):
        if i <= last:
            run.todo(chunk)
            reports.append(run.done.chunks[i])
            continue
        records = []
        for unit in chunk:
            with contextlib.suppress(InputError, MissingDependencyError):  # reported when the unit is processed
                records.append(read_record(unit, ctx))
        if records:
            method.fit(records)
        del records
        todo = run.todo(chunk)
        for result in progress(run_units(todo, ctx, EngineConfig()), len(todo), f"chunk {i + 1}/{len(parts)}"):
            run.commit(result)
        report = copy.deepcopy(method.fit_report())  # the method reuses its report's dicts in the next chunk
        if i + 1 < len(parts):
            with atomic_file(run.state_path(i)) as fh:  # a file object: a full disk is an OSError, named
                torch.save(method.state_dict(), fh)
        run.journal.chunk_done(i, report)
        with contextlib.suppress(FileNotFoundError):
            run.state_path(i - 1).unlink()
        reports.append(report)
    for state in run.state_path(0).parent.glob(f"state{run.part.suffix}.chunk-*.pt"):
        with contextlib.suppress(FileNotFoundError):  # the surrogate learnt the clean data: do not leave it
            state.unlink()
    return reports[0] if len(reports) == 1 else {"chunks": reports}

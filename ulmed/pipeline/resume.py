"""Resuming a run: take over what an earlier run of this part finished, or start over.

:func:`resume_state` compares the run's identity with ``run.json`` (the same parameters
resume, others are refused unless ``overwrite``) and reads the journal back;
:func:`clear_leftovers` then deletes what no longer belongs in the output: the outputs of
units that left the input, and temporary files of a killed run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ulmed.pipeline.cleanup import manifest_entries, remove_outputs
from ulmed.pipeline.journal import (
    CONTROL_DIR,
    RUN_FILE,
    Journal,
    JournalState,
    check_run_identity,
    remove_stale_temporaries,
)
from ulmed.pipeline.plan import PartWork
from ulmed.pipeline.request import ProtectRequest
from ulmed.pipeline.units import output_paths

log = logging.getLogger("ulmed")


def start_over(out: Path, journal: Journal, suffix: str) -> int:
    """``--overwrite``: delete what the earlier run of this part wrote, then forget it.

    What it wrote is what its journal and its manifest list; a file is deleted only when it
    still holds what was written (:func:`ulmed.pipeline.cleanup.remove_outputs`), so files the
    run did not write stay.

    Returns:
        How many files were deleted.
    """
    state = journal.load(out)
    entries = [e for group in (*state.units.values(), *state.lost.values()) for e in group]
    entries += manifest_entries(out / f"manifest{suffix}.json")
    removed = remove_outputs(out, entries)
    journal.reset()
    return removed


def drop_departed(out: Path, journal: Journal, done: JournalState, keys: set[str]) -> int:
    """Delete the outputs of finished units that are no longer in the input, and journal it.

    Returns:
        How many units were dropped.
    """
    departed = [k for k in (*done.units, *done.lost) if k not in keys]
    for key in departed:
        entries = done.units.pop(key, None) or done.lost.pop(key, [])
        remove_outputs(out, entries)
        journal.unit_removed(key)
    return len(departed)


def resume_state(request: ProtectRequest, identity: dict[str, Any]) -> tuple[Journal, JournalState]:
    """This part's journal, and what an earlier run with the same identity finished (empty if none).

    With ``overwrite`` the earlier run's outputs are deleted and it is forgotten.

    Raises:
        OutputError: The output holds a run with another identity and ``overwrite`` is False.
    """
    out, suffix = request.output_path, request.part.suffix
    resumed = check_run_identity(out, identity, request.overwrite)
    journal = Journal(out, suffix)
    if request.overwrite:
        n = start_over(out, journal, suffix)
        if n:
            log.info("--overwrite: removed %d file(s) that the earlier run wrote", n)
        resumed = False
    done = JournalState()
    if resumed:
        done = journal.load(out)
        log.info("resuming: %d unit(s) already done", len(done.units))
    return journal, done


def clear_leftovers(request: ProtectRequest, journal: Journal, done: JournalState, work: PartWork, root: Path) -> int:
    """Delete the outputs of units that left the input, and a killed run's temporaries of this part.

    Returns:
        How many finished units were dropped because their input is gone.
    """
    out, part = request.output_path, request.part
    gone = drop_departed(out, journal, done, {u.key for u in work.mine})
    if gone:
        log.warning("%d unit(s) of the earlier run are no longer in the input (moved, deleted, or now unreadable: "
                    "see the failed files): their outputs were removed", gone)
    owned = {p for u in work.mine for p in output_paths(u, root)}
    owned |= {f"manifest{part.suffix}.json", f"{CONTROL_DIR}/{RUN_FILE}"}
    chunks = len(work.units) // (request.chunk_size or 1) + 1
    owned |= {f"{CONTROL_DIR}/state{part.suffix}.chunk-{i}.pt" for i in range(chunks)}
    removed = remove_stale_temporaries(out, owned)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    return gone


__all__ = ["clear_leftovers", "drop_departed", "resume_state", "start_over"]

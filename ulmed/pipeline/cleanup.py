"""Removing what an earlier run wrote, and nothing else.

Used when a run starts over (``--overwrite``), when a unit's input changed or left the input
since an earlier run, so that no stale output stays beside the new ones. A file is deleted only
when the earlier run's journal or manifest lists it as an output and its content still has the
sha256 recorded there: a file the user put or changed in the folder is never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from ulmed.pipeline.manifest import Entry, sha256_of

log = logging.getLogger("ulmed")


def _ours(path: Path, sha256: str | None) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and sha256 is not None and sha256_of(path) == sha256
    except OSError:
        return False


def remove_outputs(out: Path, entries: Iterable[Entry], keep: set[str] | frozenset[str] = frozenset()) -> int:
    """Delete the outputs that ``entries`` record, except those in ``keep``; prune emptied folders.

    Args:
        out: The output root.
        entries: Manifest entries of an earlier run (only ``written`` and ``copied`` ones have outputs).
        keep: Output paths (relative, ``/``-separated) to leave in place.

    Returns:
        How many files were deleted.
    """
    removed = 0
    folders: set[Path] = set()
    for entry in entries:
        if entry.status not in ("written", "copied") or not entry.output or entry.output in keep:
            continue
        path = out / entry.output
        if out.resolve() not in path.resolve().parents or not _ours(path, entry.sha256):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
            folders.add(path.parent)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        while folder != out and out in folder.parents:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent
    return removed


def manifest_entries(path: Path) -> list[Entry]:
    """The entries of a manifest file written by an earlier run (none when absent or unreadable)."""
    try:
        data = json.loads(path.read_text())
        return [Entry(**e) for e in data.get("entries", [])]
    except (OSError, ValueError, TypeError):
        return []

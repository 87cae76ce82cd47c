"""The run journal: the manifest appended line by line as outputs are committed.

A run writes each unit's outputs atomically and then appends one JSON line naming them
(``.ulmed/journal.jsonl``, or ``journal.part-K-of-N.jsonl`` for a part of a sharded run).
A rerun of the same command reads the journal back and skips every unit whose line is
there and whose outputs still exist; a line cut short by a crash is dropped. ``run.json``
beside it holds the parameters that define the output, so that a rerun with different
parameters is refused instead of mixing two protections in one folder.

Durability: a line is appended (handed to the operating system, which keeps it when the
process is killed) after every output it names has its final name, and every output is synced
to disk before it gets that name (:mod:`ulmed.io.atomic`). The line itself is not synced one
by one; :meth:`Journal.sync` syncs the file once at the end of a run. After a power loss a line
that did not reach the disk only means that its unit is done again; a line that did names
outputs whose bytes are on disk, and one whose output name was lost with the rename is
dropped by :meth:`Journal.load` (the unit is redone); a line cut short is dropped too. So a
resumed run never takes over a torn output, as with a sync per line, at one sync per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ulmed.errors import OutputError, os_reason
from ulmed.io.atomic import atomic_write_json, jsonable
from ulmed.pipeline.manifest import Entry

CONTROL_DIR = ".ulmed"
RUN_FILE = "run.json"
#: Temporary files of :func:`ulmed.io.atomic.atomic_path` (``.NAME.RANDOM.partSUFFIX``).
_TEMP = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.part")


def params_digest(params: dict[str, Any]) -> str:
    """Hash of the parameters that define a run's output."""
    return hashlib.sha256(json.dumps(jsonable(params), sort_keys=True).encode()).hexdigest()


def check_run_identity(out: Path, params: dict[str, Any], overwrite: bool) -> bool:
    """Compare ``params`` with the run that wrote ``out`` before; record them if new.

    Returns:
        True when ``out`` holds an earlier run with the same parameters (resume).

    Raises:
        OutputError: ``out`` holds a run with other parameters and ``overwrite`` is False.
    """
    path = out / CONTROL_DIR / RUN_FILE
    wanted = jsonable(params)
    if path.is_file():
        try:
            old = json.loads(path.read_text()).get("params", {})
        except (OSError, ValueError):
            old = None
        if old == wanted:
            return True
        if not overwrite:
            changed = sorted(k for k in set(old or {}) | set(wanted) if (old or {}).get(k) != wanted.get(k))
            raise OutputError(
                f"holds a run with other parameters (changed: {', '.join(changed) or 'unreadable run.json'}); "
                "rerun with the same parameters to resume, choose a new -o, or pass --overwrite", out)
    atomic_write_json(path, {"params": wanted, "params_sha256": params_digest(params)})
    return False


def remove_stale_temporaries(out: Path, owned: set[str]) -> int:
    """Delete temporary files that a killed run left next to the outputs in ``owned``.

    Only temporaries of this part's own outputs are touched: another part writing into the
    same folder at the same time keeps its files in progress.

    Args:
        out: The output root.
        owned: Output paths (relative, ``/``-separated) of this part's units.

    Returns:
        How many files were removed.
    """
    removed = 0
    for dirpath, _, filenames in os.walk(out):
        base = Path(dirpath)
        for name in filenames:
            match = _TEMP.match(name)
            if match and (base / match.group(1)).relative_to(out).as_posix() in owned:
                with contextlib.suppress(OSError):
                    (base / name).unlink()
                    removed += 1
    return removed


@dataclass
class JournalState:
    """What an earlier (possibly interrupted) run of this part finished."""

    units: dict[str, list[Entry]] = field(default_factory=dict)
    chunks: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: The inputs of each finished unit as they were read (:func:`ulmed.pipeline.units.input_stamps`).
    stamps: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    #: Finished units whose outputs are gone (deleted since): redone, and their other outputs removed.
    lost: dict[str, list[Entry]] = field(default_factory=dict)


class Journal:
    """Append-only JSON-lines record of one part of a run.

    Args:
        out: The output folder.
        suffix: The part's tag (:attr:`ulmed.pipeline.shard.Part.suffix`).
    """

    def __init__(self, out: Path, suffix: str = "") -> None:
        self.path = out / CONTROL_DIR / f"journal{suffix}.jsonl"

    def reset(self) -> None:
        """Forget an earlier run of this part (``--overwrite``)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def load(self, out: Path) -> JournalState:
        """Read what was finished; drop a torn last line and units whose outputs are gone."""
        state = JournalState()
        if not self.path.is_file():
            return state
        good = 0
        with open(self.path, "rb") as fh:
            for raw in fh:
                try:
                    line = json.loads(raw)
                except ValueError:
                    break  # a line cut short by a crash: everything after it is dropped
                if not raw.endswith(b"\n"):
                    break
                good += len(raw)
                if "unit" in line:
                    state.units[line["unit"]] = [Entry(**e) for e in line["entries"]]
                    state.stamps[line["unit"]] = line.get("inputs") or {}
                elif "removed" in line:
                    state.units.pop(line["removed"], None)
                    state.stamps.pop(line["removed"], None)
                elif "chunk" in line:
                    state.chunks[int(line["chunk"])] = line.get("fit") or {}
        if good != self.path.stat().st_size:
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
        for key, entries in list(state.units.items()):
            if any(e.output and not (out / e.output).is_file() for e in entries if e.status in ("written", "copied")):
                state.lost[key] = state.units.pop(key)
        return state

    def _append(self, record: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = (json.dumps(jsonable(record), allow_nan=False) + "\n").encode()
            with open(self.path, "ab") as fh:  # no sync per line: see the module docstring
                fh.write(data)
        except OSError as exc:
            raise OutputError(f"cannot append to the run journal ({os_reason(exc)}); "
                              "free space or check the output folder, then rerun", self.path) from exc

    def sync(self) -> None:
        """Sync the journal to disk (once, at the end of a run; its lines are not synced one by one)."""
        try:
            with open(self.path, "rb") as fh:
                os.fsync(fh.fileno())
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutputError(f"cannot sync the run journal ({os_reason(exc)}); "
                              "free space or check the output folder, then rerun", self.path) from exc

    def unit_done(self, key: str, entries: list[Entry], stamps: dict[str, list[Any]] | None = None) -> None:
        """Record that a unit's outputs are committed, with the inputs they were made from."""
        self._append({"unit": key, "entries": [asdict(e) for e in entries], "inputs": stamps or {}})

    def unit_removed(self, key: str) -> None:
        """Record that a unit's outputs were deleted (its input is gone from the inventory)."""
        self._append({"removed": key})

    def chunk_done(self, index: int, fit: dict[str, Any]) -> None:
        """Record that every unit of a fitted chunk is committed, with what the fit found."""
        self._append({"chunk": index, "fit": fit})

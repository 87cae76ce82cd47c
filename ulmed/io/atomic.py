"""Atomic file output: write to a temporary name in the target folder, then rename.

Every output's bytes are on disk (``fsync``) before it gets its final name, so a name that a
run journal lists never holds a half-written file after a power loss. :func:`atomic_path`
does it file by file; :class:`AtomicBatch` (:func:`atomic_batch`) does it for a group of files
that appear together (the instances of a DICOM series): their bytes are written, hashed and
synced by background threads while the caller prepares the next file (a sync waits on the
disk, not the CPU, and syncs issued together share the file system's journal commits), and
the files are renamed, in order, only once all of them are on disk.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ulmed.errors import InputError, OutputError, cannot_read, os_reason


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    An exception inside the block removes the temporary file, so an interrupted write
    never leaves a half-written file under the final name.

    Args:
        target: Final path of the file.
        suffix: Suffix of the temporary file (defaults to the target's suffixes, which
            matters for writers that choose a format from the name, e.g. ``.nii.gz``).

    Yields:
        The temporary path to write to.

    Raises:
        OutputError: The folder, the temporary file or the file itself cannot be written
            (a full disk, no permission); it names ``target`` and the system's reason.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder ({os_reason(exc)}); {_hint(exc)}", target.parent) from exc
    tmp = _temporary(target, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as fh:  # on disk before the rename (and before a journal line names it)
            os.fsync(fh.fileno())
        if tmp.stat().st_mode & 0o777 == 0o600:  # still mkstemp's private mode: give it a normal file's
            os.chmod(tmp, _default_file_mode())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and _about(exc, tmp, target):
            raise OutputError(f"cannot be written ({os_reason(exc)}); {_hint(exc)}", target) from exc
        raise


def _temporary(target: Path, suffix: str | None) -> Path:
    """A new empty temporary file next to ``target`` (``.NAME.RANDOM.partSUFFIX``).

    Raises:
        OutputError: It cannot be created.
    """
    if suffix is None:
        suffix = "".join(target.suffixes)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot be written ({os_reason(exc)}); {_hint(exc)}", target) from exc
    os.close(fd)
    return Path(tmp_name)


#: Threads that write and sync the files of :class:`AtomicBatch` objects (one pool per process).
BATCH_THREADS = 4
#: Files of one batch being written at a time at most: the bytes a batch holds stay bounded.
BATCH_IN_FLIGHT = 8
_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(BATCH_THREADS, thread_name_prefix="ulmed-write")
    return _POOL


def _write_synced(tmp: Path, data: bytes | memoryview) -> str:
    """Write ``data`` to ``tmp``, sync it to disk; its sha256 (hex)."""
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


class AtomicBatch:
    """Files that appear together: each written to a temporary, synced in a background thread, renamed at the end.

    Use it through :func:`atomic_batch`: when the block ends normally, :meth:`commit` waits until
    every file is on disk and renames them onto their targets in the order given; when it ends by
    an exception, :meth:`discard` removes the temporaries and no target is touched. After a
    commit, :attr:`digests` holds the sha256 of every file written, by target.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path, concurrent.futures.Future[str]]] = []
        self._folders: set[Path] = set()  # made (or found) already: a series' files share one
        #: sha256 (hex) of each committed file, by target path.
        self.digests: dict[Path, str] = {}

    def write_bytes(self, target: str | Path, data: bytes | memoryview, suffix: str | None = None) -> None:
        """Queue ``data`` as the content of ``target`` (written now in the background, renamed at commit).

        Raises:
            OutputError: The folder or the temporary file cannot be created.
        """
        target = Path(target)
        if target.parent not in self._folders:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create the output folder ({os_reason(exc)}); {_hint(exc)}",
                                  target.parent) from exc
            self._folders.add(target.parent)
        tmp = _temporary(target, suffix)
        self._pending.append((tmp, target, _pool().submit(_write_synced, tmp, data)))
        running = [f for _, _, f in self._pending if not f.done()]
        if len(running) > BATCH_IN_FLIGHT:
            concurrent.futures.wait(running[: len(running) - BATCH_IN_FLIGHT])

    def commit(self) -> None:
        """Wait for every file, then rename each onto its target, in order.

        Raises:
            OutputError: A file could not be written or renamed (full disk, permissions); the
                temporaries left are removed.
        """
        mode = _default_file_mode()
        try:
            for _, target, future in self._pending:
                try:
                    self.digests[target] = future.result()
                except OSError as exc:
                    raise OutputError(f"cannot be written ({os_reason(exc)}); {_hint(exc)}", target) from exc
            for tmp, target, _ in self._pending:
                try:
                    os.chmod(tmp, mode)  # mkstemp's private mode: give it a normal file's
                    os.replace(tmp, target)
                except OSError as exc:
                    raise OutputError(f"cannot be written ({os_reason(exc)}); {_hint(exc)}", target) from exc
        except BaseException:
            self.discard()
            raise
        self._pending = []

    def discard(self) -> None:
        """Remove the temporaries (after their writes end); no target is touched."""
        concurrent.futures.wait([f for _, _, f in self._pending])
        for tmp, _, _ in self._pending:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._pending = []


@contextlib.contextmanager
def atomic_batch() -> Iterator[AtomicBatch]:
    """An :class:`AtomicBatch` committed when the block ends normally, discarded when it raises."""
    batch = AtomicBatch()
    try:
        yield batch
    except BaseException:
        batch.discard()
        raise
    batch.commit()


#: Error numbers that mean the disk (or the user's quota) is full.
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _hint(exc: OSError) -> str:
    """What to do about an output that cannot be written."""
    if exc.errno in _FULL:
        return "free some space and rerun the same command (finished outputs are kept and resumed)"
    return "check the output folder (permissions, free space) or choose another -o, then rerun"


def _about(exc: OSError, *paths: Path) -> bool:
    """Whether ``exc`` concerns the output being written (no file named, or one of ``paths``).

    An error that names another file (the source of a copy) is not an output error.
    """
    return exc.filename is None or str(exc.filename) in {str(p) for p in paths}


@contextlib.contextmanager
def atomic_file(target: str | Path, suffix: str | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file open at a temporary name next to ``target``; rename it on success.

    Writers given a file object write through Python's own file, so a full disk is an
    ``OSError`` (then an :class:`~ulmed.errors.OutputError` naming ``target``); writers given
    a path may say it in their own words (``torch.save`` raises a ``RuntimeError``).

    Args:
        target: Final path of the file.
        suffix: As for :func:`atomic_path`.

    Yields:
        The open file.
    """
    with atomic_path(target, suffix) as tmp, open(tmp, "wb") as fh:
        yield fh


def _default_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask



def atomic_copy(source: str | Path, target: str | Path) -> None:
    """Copy ``source`` to ``target`` atomically (bytes and modification time).

    Raises:
        InputError: ``source`` cannot be read (no permission, gone); ``target`` is not touched.
        OutputError: ``target`` cannot be written.
    """
    try:
        with atomic_path(target) as tmp:
            shutil.copy2(source, tmp)
    except OSError as exc:  # what atomic_path did not make an OutputError names the source
        raise InputError(cannot_read(exc), source) from exc


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def jsonable(value: Any) -> Any:
    """Recursively turn numpy values into Python ones, paths into text and NaN/inf into None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(target: str | Path, data: Any) -> None:
    """Write ``data`` as strict JSON (NaN/inf as null), atomically."""
    atomic_write_bytes(target, json.dumps(jsonable(data), indent=2, allow_nan=False).encode())

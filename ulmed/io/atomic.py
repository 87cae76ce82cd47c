"""Atomic file output: write to a temporary name in the target folder, then rename."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ulmed.errors import OutputError, os_reason


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
    if suffix is None:
        suffix = "".join(target.suffixes)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot be written ({os_reason(exc)}); {_hint(exc)}", target) from exc
    os.close(fd)
    tmp = Path(tmp_name)
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
    """Copy ``source`` to ``target`` atomically (bytes and modification time)."""
    with atomic_path(target) as tmp:
        shutil.copy2(source, tmp)


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

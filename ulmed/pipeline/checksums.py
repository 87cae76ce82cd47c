"""``SHA256SUMS``: one line per file of a release, in the format GNU ``sha256sum -c`` reads.

Each line is ``<64 hex digits>, two spaces, <path relative to the release, with />``,
sorted by path. A name holding a backslash, newline or carriage return is written the way
GNU coreutils writes it: the line starts with ``\\`` and the name carries ``\\\\``,
``\\n``, ``\\r``. Reading is strict: a path that is absolute or steps out with ``..`` is
refused as malformed, so checking a release never reads a file outside it.

The top-level ``.ulmed/`` folder is a protection run's resume state (journal, run
parameters), not data: it is neither listed nor reported as an extra file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from ulmed.errors import InputError, OutputError, os_reason
from ulmed.io.atomic import atomic_write_bytes
from ulmed.pipeline.manifest import sha256_of

SUMS_NAME = "SHA256SUMS"
#: The run-state folder that :func:`ulmed.pipeline.protect.protect_path` keeps in its output.
RUN_STATE_DIR = ".ulmed"
_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.*)", re.DOTALL)
_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}
_FIX = ("expected '<64 hex digits>  <relative path>' per line, as `ulmed release` or `sha256sum` "
        "write it; restore the file from the release's publisher")


def release_files(root: Path) -> list[str]:
    """Every file under ``root`` (links included, not followed), sorted.

    ``SHA256SUMS`` and the run-state folder ``.ulmed/`` at the top are left out.

    Args:
        root: The release folder.

    Returns:
        Paths relative to ``root``, with ``/`` separators.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        if base == root:
            dirnames[:] = [d for d in dirnames if d != RUN_STATE_DIR]
        links = [d for d in dirnames if (base / d).is_symlink()]  # os.walk lists but never enters them
        for name in (*filenames, *links):
            rel = (base / name).relative_to(root).as_posix()
            if rel != SUMS_NAME:
                found.append(rel)
    return sorted(found)


def _escape(rel: str) -> tuple[str, str]:
    """GNU's escaping: (line prefix, escaped name)."""
    if not any(c in rel for c in "\\\n\r"):
        return "", rel
    return "\\", rel.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _unescape(name: str) -> str | None:
    """Undo :func:`_escape`; None for an unknown escape sequence."""
    out, chars = [], iter(name)
    for c in chars:
        if c == "\\":
            c = _ESCAPES.get(next(chars, ""), "")
            if not c:
                return None
        out.append(c)
    return "".join(out)


def write_sums(root: Path) -> tuple[Path, int]:
    """Hash every file under ``root`` and write ``root/SHA256SUMS`` atomically.

    Args:
        root: The release folder.

    Returns:
        The path of ``SHA256SUMS`` and the number of files it lists.

    Raises:
        OutputError: A symbolic link lies in the release (a release holds plain files only).
    """
    lines = []
    for rel in release_files(root):
        path = root / rel
        if path.is_symlink() or not path.is_file():
            raise OutputError("is a link or not a plain file; a release holds plain files only: "
                              "remove it and rerun", path)
        prefix, name = _escape(rel)
        lines.append(f"{prefix}{sha256_of(path)}  {name}\n")
    target = root / SUMS_NAME
    atomic_write_bytes(target, "".join(lines).encode("utf-8", "surrogateescape"))
    return target, len(lines)


def _check_path(name: str) -> str | None:
    """Why a listed path may not be used (None when it is a plain relative path)."""
    if not name or "\0" in name:
        return "empty path"
    if name.startswith("/"):
        return f"absolute path {name!r}"
    if ".." in PurePosixPath(name).parts:
        return f"path {name!r} steps out of the release with '..'"
    if PurePosixPath(name).as_posix() == SUMS_NAME:
        return f"it lists {SUMS_NAME} itself"
    if PurePosixPath(name).parts[0] == RUN_STATE_DIR:
        return f"path {name!r} lies in the run-state folder {RUN_STATE_DIR}/, which is not part of a release"
    return None


def read_sums(path: Path) -> dict[str, str]:
    """Parse a ``SHA256SUMS`` file.

    Args:
        path: The ``SHA256SUMS`` file.

    Returns:
        Lower-case hex digest by relative path (``/`` separators, ``.`` parts removed).

    Raises:
        InputError: The file cannot be read, lists nothing, or a line is malformed (bad
            digest, absolute path, ``..``, a path listed twice).
    """
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise InputError(f"cannot be read ({os_reason(exc)}); check its permissions", path) from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise InputError(f"lists no files; {_FIX}", path)
    sums: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        escaped = line.startswith("\\")
        match = _LINE.fullmatch(line[1:] if escaped else line)
        name = None if match is None else (_unescape(match.group(2)) if escaped else match.group(2))
        why = "not '<digest>  <path>'" if name is None else _check_path(name)
        if why is None and line.endswith("\r") and not escaped:
            why = "Windows line ending"
        if why is None:
            name = PurePosixPath(name).as_posix()  # type: ignore[arg-type]
            why = f"path {name!r} listed twice" if name in sums else None
        if why is not None:
            raise InputError(f"line {number} is malformed ({why}); {_FIX}", path)
        sums[name] = match.group(1).lower()  # type: ignore[index, union-attr]
    return sums


__all__ = ["RUN_STATE_DIR", "SUMS_NAME", "read_sums", "release_files", "write_sums"]

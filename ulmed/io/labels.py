"""Class labels for classification data: a CSV that maps input paths to integer labels."""

from __future__ import annotations

import csv
from pathlib import Path

from ulmed.errors import InputError, os_reason

PATH_COLUMNS = ("image", "path", "file", "filename", "key")
LABEL_COLUMNS = ("label", "class", "target")


def load_labels(path: str | Path) -> dict[str, int]:
    """Read ``path,label`` rows (header names from :data:`PATH_COLUMNS` / :data:`LABEL_COLUMNS`).

    Paths are relative to the protected input folder, as the record keys are.

    Raises:
        InputError: Missing file, missing columns, or a label that is not an integer.
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise InputError(f"cannot read the labels file ({os_reason(exc)}); check --labels", path) from exc
    if not rows:
        raise InputError("labels file has no rows; it needs a header and one row per image", path)
    header = {name.lower(): name for name in rows[0]}
    path_col = next((header[c] for c in PATH_COLUMNS if c in header), None)
    label_col = next((header[c] for c in LABEL_COLUMNS if c in header), None)
    if path_col is None or label_col is None:
        raise InputError(
            f"labels file needs a path column ({'/'.join(PATH_COLUMNS)}) "
            f"and a label column ({'/'.join(LABEL_COLUMNS)})",
            path,
        )
    labels: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        try:
            labels[row[path_col].strip()] = int(row[label_col])
        except (TypeError, ValueError):
            raise InputError(f"line {line}: label {row[label_col]!r} is not an integer", path) from None
    return labels

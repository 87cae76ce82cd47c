"""A cell of the evaluation grid on disk: its JSON, its fingerprint's data digest, its example predictions.

Each finished cell is ``out/cells/<victim>__<defense>__<protection>.json`` (:func:`cell_key`)
with a fingerprint of everything that shapes it; :func:`load_cell` gives it back only when the
fingerprint matches. A segmentation cell also keeps its victim's predictions of the first
:data:`N_EXAMPLES` clean test items beside it (``.examples.npz``) for the report's at-a-glance figure.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.io.atomic import atomic_write_bytes, atomic_write_json

log = logging.getLogger("ulmed")
#: A segmentation cell keeps its victim's predictions of the first test items (for the report's figure).
EXAMPLES, N_EXAMPLES = "examples", 2


def cell_key(victim: str, defense: str, protection: str) -> str:
    """File stem of a cell: ``<victim>__<defense>__<protection>``, with a defense's ``:`` as ``=`` and ``,``
    as ``_`` (``resize:128`` -> ``resize=128``) so that the name is valid on every file system."""
    return f"{victim}__{defense.replace(':', '=').replace(',', '_')}__{protection}"


#: Write JSON (NaN/inf as null) atomically.
write_json = atomic_write_json


def digest(*arrays: np.ndarray) -> str:
    """A short sha256 of arrays (dtype, shape and bytes): the data part of a cell's fingerprint."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]



def write_examples(path: Path, labels: np.ndarray) -> None:
    """Write a cell's example predictions (label maps, uint8) atomically as ``.npz``."""
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=labels)
    atomic_write_bytes(path, buf.getvalue())


def load_examples(cells_dir: Path, victim: str, defense: str, protection: str) -> np.ndarray | None:
    """The example predictions of a cell, or None when it has none (classification, an older run)."""
    path = cells_dir / f"{cell_key(victim, defense, protection)}.examples.npz"
    try:
        with np.load(path) as data:
            return np.asarray(data["labels"])
    except (OSError, KeyError, ValueError):
        return None


def load_cell(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """A finished cell with this fingerprint, marked ``reused``, or None (absent, stale, unreadable)."""
    if not path.is_file():
        return None
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("unreadable cell %s; training it again", path)
        return None
    if not isinstance(cell, dict) or cell.get("fingerprint") != fingerprint or "metrics" not in cell:
        log.warning("cell %s was made with other settings or data; training it again", path.name)
        return None
    cell["reused"] = True
    cell["metrics"] = {k: (float("nan") if v is None else v) for k, v in cell["metrics"].items()}
    return cell

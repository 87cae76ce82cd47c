"""``ulmed info``: what a protection run would read, without patient names, IDs or dates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ulmed.errors import InputError, MissingDependencyError
from ulmed.io.discover import discover
from ulmed.pipeline.units import read_unit, relative, units_of

#: The columns of ``ulmed info``, in order (:func:`table_rows` gives one tuple per record).
COLUMNS = ("key", "kind", "modality", "shape", "spacing", "dtype", "range", "unit", "target")


def describe(input_path: str | Path, masks: str | Path | None = None) -> dict[str, Any]:
    """Describe every record under ``input_path``.

    Returns:
        ``{"root", "records": [...], "copied": n, "bad": [...], "skipped": [...]}``; each
        record row has key, kind, shape, spacing, modality, dtype, intensity range, unit and
        whether a target was found. Only fields from the readers' ``meta`` are shown, and
        those never hold identifying attributes.
    """
    inv = discover(input_path, masks)
    rows: list[dict[str, Any]] = []
    bad = [(relative(p, inv.root), r) for p, r in inv.dicom.bad + inv.bad]
    for unit in units_of(inv):
        try:
            rec = read_unit(unit, inv.root)
        except (InputError, MissingDependencyError) as exc:
            bad.append((unit.key, exc.reason))
            continue
        target = rec.target
        rows.append(
            {
                "key": rec.key,
                "kind": rec.kind,
                "shape": list(rec.image.shape),
                "spatial_dims": rec.spatial_dims,
                "spacing": rec.meta.get("spacing"),
                "modality": rec.meta.get("modality", ""),
                "dtype": str(rec.meta.get("dtype", rec.image.dtype)),
                "min": float(np.min(rec.image)),
                "max": float(np.max(rec.image)),
                "unit": rec.mapping.unit,
                "target": "label" if isinstance(target, int) else ("map" if target is not None else "-"),
            }
        )
    return {
        "root": str(inv.root),
        "records": rows,
        "copied": len(inv.targets) + len(inv.others) + len(inv.dicom.non_image),
        "non_image_dicom": len(inv.dicom.non_image),
        "bad": bad,
        "skipped": [(relative(p, inv.root), r) for p, r in (*inv.skipped, *inv.dicom.skipped)],
    }


def table_rows(description: dict[str, Any]) -> list[tuple[str, ...]]:
    """The records of :func:`describe` as text, one tuple of :data:`COLUMNS` per record."""
    rows = []
    for r in description["records"]:
        spacing = "x".join(f"{v:.3g}" for v in r["spacing"]) if r["spacing"] else "-"
        rows.append((
            r["key"], r["kind"], r["modality"] or "-", "x".join(map(str, r["shape"])), spacing, r["dtype"],
            f"{r['min']:.4g}..{r['max']:.4g}", r["unit"], r["target"],
        ))
    return rows


def exit_code(description: dict[str, Any]) -> int:
    """The exit code of ``ulmed info`` as a pre-flight check of :func:`describe`'s result.

    Returns:
        0 when every input is readable, 3 when some are bad (others are readable), 2 when
        inputs are bad and none is readable; the same codes as ``ulmed protect``.
    """
    if not description["bad"]:
        return 0
    return 3 if description["records"] else 2

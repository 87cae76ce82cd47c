"""One unit of work, the same in every engine: read, protect, write, describe.

:func:`process_unit` runs in the driver, in a local worker process or in a Ray task;
everything it needs travels in a picklable :class:`WorkContext`, and what it returns is a
:class:`UnitResult` of manifest entries. Failures of a bad input become ``failed`` entries
(with the reason) instead of exceptions, so one bad file never stops the other workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ulmed.core.method import ProtectionMethod
from ulmed.errors import InputError, MissingDependencyError
from ulmed.eval.imperceptibility import imperceptibility
from ulmed.io.atomic import atomic_copy
from ulmed.io.base import WriteOptions
from ulmed.io.dicom import DicomSeries, write_series
from ulmed.io.discover import Item
from ulmed.io.images import output_relpath, write_image
from ulmed.io.nifti import write_nifti
from ulmed.io.record import Record
from ulmed.pipeline.manifest import Entry, sha256_of
from ulmed.pipeline.units import Copy, Unit, read_unit, relative

log = logging.getLogger("ulmed")


@dataclass
class WorkContext:
    """What every unit of a run needs (picklable; sent once to each worker).

    Args:
        root: The input root.
        out: The output root.
        method: The protection method (fitted already when it needs a fit).
        options: Writer options (UID salt, DICOM encoding, de-identification).
        labels: Class labels by record key or folder (classification), if any.
    """

    root: Path
    out: Path
    method: ProtectionMethod
    options: WriteOptions
    labels: dict[str, int] | None = None


@dataclass
class UnitResult:
    """The manifest entries of one unit; ``error`` is set (with the path) when it failed."""

    key: str
    entries: list[Entry] = field(default_factory=list)
    error: tuple[str, str] | None = None


def read_record(unit: Unit, ctx: WorkContext) -> Record:
    """Read a unit into a record, with its class label when labels were given."""
    rec = read_unit(unit, ctx.root)
    if ctx.labels and rec.target is None:
        rec.target = ctx.labels.get(rec.key, ctx.labels.get(str(Path(rec.key).parent)))
    return rec


def _write(unit: Unit, protected: Record, ctx: WorkContext) -> list[tuple[Path, Path, str | None]]:
    """Write one protected record; return (input, output, note) triples."""
    if unit.kind == "dicom":
        note = unit.source.note if isinstance(unit.source, DicomSeries) else None  # why its series was split
        return [(src, dst, note) for src, dst in write_series(protected, ctx.root, ctx.out, ctx.options)]
    assert isinstance(unit.source, Item)
    rel = unit.source.rel
    if unit.kind == "nifti":
        dst = ctx.out / rel
        write_nifti(protected, dst)
        return [(unit.source.path, dst, None)]
    out_rel = output_relpath(rel)
    dst = ctx.out / out_rel
    write_image(protected, dst)
    note = f"lossy input re-encoded losslessly as {out_rel.name}" if out_rel != rel else None
    return [(unit.source.path, dst, note)]


def _copy(unit: Unit, ctx: WorkContext) -> UnitResult:
    assert isinstance(unit.source, Copy)
    src, dst = unit.source.path, ctx.out / unit.source.dst
    if unit.source.kind == "dicom-non-image" and ctx.options.deidentify is not None:
        from ulmed.io.deidentify import copy_deidentified

        copy_deidentified(src, dst, ctx.options.deidentify)
    else:
        atomic_copy(src, dst)
    entry = Entry(relative(src, ctx.root), "copied", relative(dst, ctx.out), unit.source.kind, sha256=sha256_of(dst))
    return UnitResult(unit.key, [entry])


def process_unit(unit: Unit, ctx: WorkContext) -> UnitResult:
    """Protect (or copy) one unit and write its outputs atomically.

    Returns:
        The unit's manifest entries; ``failed`` entries and ``error`` for a bad input.

    Raises:
        OutputError: An output cannot be written (this stops the run: the next unit would fail too).
    """
    if unit.kind == "copy":
        return _copy(unit, ctx)
    try:
        clean = read_record(unit, ctx)
    except (InputError, MissingDependencyError) as exc:
        log.warning("skipped %s", exc)
        entries = [Entry(relative(p, ctx.root), "failed", kind=unit.kind, record=unit.key, reason=exc.reason) for p in unit.files]
        return UnitResult(unit.key, entries, (exc.reason, str(exc.path or unit.key)))
    method = ctx.method
    protected = method.protect(clean)
    budget = method.budget.describe(clean.mapping)
    metrics = imperceptibility(clean.unit_image(), protected.unit_image(), clean.mapping.scale)
    remark = method.note(clean)
    entries = [
        Entry(relative(src, ctx.root), "written", relative(dst, ctx.out), unit.kind, unit.key, sha256_of(dst),
              "; ".join(n for n in (note, remark) if n) or None, budget, metrics)
        for src, dst, note in _write(unit, protected, ctx)
    ]
    return UnitResult(unit.key, entries)


def process_batch(units: list[Unit], ctx: WorkContext) -> list[UnitResult]:
    """:func:`process_unit` over a batch (the task of a worker process or Ray task)."""
    return [process_unit(u, ctx) for u in units]

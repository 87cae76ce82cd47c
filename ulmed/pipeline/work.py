"""One unit of work, the same in every engine: read, protect, write, describe.

:func:`process_batch` runs in the driver, in a local worker process or in a Ray task;
everything it needs travels in a picklable :class:`WorkContext`, and what it returns is a
:class:`UnitResult` of manifest entries. Failures of a bad input become ``failed`` entries
(with the reason) instead of exceptions, so one bad file never stops the other workers.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.core.method import ProtectionMethod
from ulmed.errors import InputError, MissingDependencyError
from ulmed.eval.imperceptibility import imperceptibility, metrics_options
from ulmed.io.atomic import atomic_copy
from ulmed.io.base import WriteOptions
from ulmed.io.dicom_series import DicomSeries
from ulmed.io.discover import Item
from ulmed.io.kinds import output_relpath
from ulmed.io.notices import join_messages, library_messages, routed_messages
from ulmed.io.record import Record
from ulmed.pipeline.manifest import Entry, sha256_of
from ulmed.pipeline.units import Copy, Unit, input_stamps, read_unit, relative

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
        metrics: ``sampled``, ``full`` or ``none`` (``--metrics``).
    """

    root: Path
    out: Path
    method: ProtectionMethod
    options: WriteOptions
    labels: dict[str, int] | None = None
    #: How each record's imperceptibility is measured (:data:`ulmed.eval.imperceptibility.METRICS`).
    metrics: str = "sampled"


@dataclass
class UnitResult:
    """The manifest entries of one unit; ``error`` is set (with the path) when it failed."""

    key: str
    entries: list[Entry] = field(default_factory=list)
    error: tuple[str, str] | None = None
    #: The unit's inputs as they were read (:func:`ulmed.pipeline.units.input_stamps`), for resume.
    stamps: dict[str, list[Any]] | None = None


def read_record(unit: Unit, ctx: WorkContext) -> Record:
    """Read a unit into a record, with its class label when labels were given."""
    rec = read_unit(unit, ctx.root)
    if ctx.labels and rec.target is None:
        rec.target = ctx.labels.get(rec.key, ctx.labels.get(str(Path(rec.key).parent)))
    return rec


def _write(unit: Unit, protected: Record, ctx: WorkContext,
           digests: dict[Path, str]) -> list[tuple[Path, Path, str | None]]:
    """Write one protected record; return (input, output, note) triples.

    ``digests`` gets the sha256 of the outputs whose writer hashed the bytes it wrote (DICOM). The
    writers are imported by the first record of their kind (see ``read_unit``).
    """
    if unit.kind == "dicom":
        from ulmed.io.dicom import write_series

        note = unit.source.note if isinstance(unit.source, DicomSeries) else None  # why its series was split
        pairs = write_series(protected, ctx.root, ctx.out, ctx.options, digests)
        return [(src, dst, note) for src, dst in pairs]
    assert isinstance(unit.source, Item)
    rel = unit.source.rel
    if unit.kind == "nifti":
        from ulmed.io.nifti import write_nifti

        dst = ctx.out / rel
        write_nifti(protected, dst)
        return [(unit.source.path, dst, None)]
    from ulmed.io.images import write_image

    out_rel = output_relpath(rel)
    dst = ctx.out / out_rel
    write_image(protected, dst)
    note = f"lossy input re-encoded losslessly as {out_rel.name}" if out_rel != rel else None
    return [(unit.source.path, dst, note)]


def _failed(unit: Unit, ctx: WorkContext, exc: InputError | MissingDependencyError) -> UnitResult:
    """``failed`` entries for every file of a unit that could not be read, de-identified or copied.

    When the error names one file of a multi-file series, the series' other files say so,
    so that each manifest entry (and each CLI line) tells which file to fix.
    """
    log.warning("skipped %s", exc)
    files = [relative(f, ctx.root) for f in unit.files]
    culprit = relative(Path(exc.path), ctx.root) if exc.path else None
    kind, record = (unit.source.kind, None) if isinstance(unit.source, Copy) else (unit.kind, unit.key)
    entries = []
    for rel in files:
        sibling = culprit in files and culprit != rel
        reason = f"left out with its series because {culprit}: {exc.reason}" if sibling else exc.reason
        entries.append(Entry(rel, "failed", kind=kind, record=record, reason=reason))
    return UnitResult(unit.key, entries, (exc.reason, str(exc.path or unit.key)))


def _copy(unit: Unit, ctx: WorkContext) -> UnitResult:
    assert isinstance(unit.source, Copy)
    src, dst = unit.source.path, ctx.out / unit.source.dst
    try:
        if unit.source.kind == "dicom-non-image" and ctx.options.deidentify is not None:
            from ulmed.io.deidentify import copy_deidentified

            copy_deidentified(src, dst, ctx.options.deidentify)
        else:
            atomic_copy(src, dst)
    except InputError as exc:  # unreadable, a value dicognito cannot handle, a DICOMDIR: this file fails, not the run
        return _failed(unit, ctx, exc)
    entry = Entry(relative(src, ctx.root), "copied", relative(dst, ctx.out), unit.source.kind, sha256=sha256_of(dst))
    return UnitResult(unit.key, [entry])


def _read(unit: Unit, ctx: WorkContext) -> Record | UnitResult:
    """The unit's record; or its result already: a copy done, or ``failed`` entries for a bad input."""
    if unit.kind == "copy":
        return _copy(unit, ctx)
    try:
        return read_record(unit, ctx)
    except (InputError, MissingDependencyError) as exc:
        return _failed(unit, ctx, exc)


def _finish(unit: Unit, clean: Record, protected: Record, ctx: WorkContext) -> UnitResult:
    """Describe one protected record (budget, metrics, notes) and write its outputs atomically.

    Returns:
        The unit's manifest entries; ``failed`` entries and ``error`` when a value cannot be written.

    Raises:
        OutputError: An output cannot be written (this stops the run: the next unit would fail too).
    """
    method = ctx.method
    budget = method.budget.describe(clean.mapping)
    # ``protected`` holds the stored values (quantised within the budget): these are the written file's metrics.
    # They are measured in a thread while the files are written (numpy lets go of the interpreter, the writers
    # mostly hold it); both only read the images.
    measuring = _metrics_thread().submit(
        imperceptibility, clean.image, protected.image, clean.mapping.scale,
        to_unit=functools.partial(clean.mapping.to_unit, dtype=np.float64), affine=True, **metrics_options(ctx.metrics))
    remark = method.note(clean)
    if (too_small := method.budget.too_small(clean)) is not None:
        log.warning("%s: %s", unit.key, too_small)
        remark = "; ".join(n for n in (remark, too_small) if n)
    digests: dict[Path, str] = {}
    try:
        written = _write(unit, protected, ctx, digests)
    except InputError as exc:  # a value the de-identifier cannot handle: the unit fails, not the run
        concurrent.futures.wait([measuring])
        return _failed(unit, ctx, exc)  # the writer removed what it had written of the series
    metrics = measuring.result()
    if clean.mapping.budget_range > 0 and metrics["psnr"] is not None:  # against the range a reading window shows
        metrics["psnr_robust"] = metrics["psnr"] + 20 * math.log10(clean.mapping.budget_scale / clean.mapping.scale)
    entries = [
        Entry(relative(src, ctx.root), "written", relative(dst, ctx.out), unit.kind, unit.key,
              digests.get(dst) or sha256_of(dst),
              "; ".join(n for n in (note, remark) if n) or None, budget, metrics)
        for src, dst, note in written
    ]
    return UnitResult(unit.key, entries)


_METRICS: concurrent.futures.ThreadPoolExecutor | None = None


def _metrics_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The thread that measures a record's imperceptibility while its files are written (one per process)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ulmed-metrics")
    return _METRICS


def _stamps(unit: Unit, ctx: WorkContext) -> dict[str, list[Any]] | None:
    """The unit's input stamps, taken before it is read (None: unreadable, so it fails and is not journalled)."""
    try:
        return input_stamps(unit, ctx.root)
    except OSError:
        return None


def _groups(units: list[Unit], size: int) -> list[list[Unit]]:
    """Consecutive image units in groups of up to ``size``; every other unit alone.

    A series or a volume fills the method's batches with its own slices, and may be large.
    """
    groups: list[list[Unit]] = []
    for unit in units:
        if unit.kind == "image" and groups and groups[-1][-1].kind == "image" and len(groups[-1]) < size:
            groups[-1].append(unit)
        else:
            groups.append([unit])
    return groups


@dataclass
class _Read:
    """A group's units as read: per unit its stamps, its record (or failed result) and what the libraries said."""

    stamps: list[dict[str, list[Any]] | None] = field(default_factory=list)
    records: list[Record | UnitResult] = field(default_factory=list)
    said: list[list[str]] = field(default_factory=list)


def _read_group(units: list[Unit], ctx: WorkContext) -> _Read:
    """Stamp and read every unit of a group; a unit that cannot be read is a failed result."""
    got = _Read()
    for unit in units:
        got.stamps.append(_stamps(unit, ctx))
        with library_messages() as messages:
            got.records.append(_read(unit, ctx))
        got.said.append(messages)
    return got


def _finish_group(units: list[Unit], got: _Read, ctx: WorkContext) -> list[UnitResult]:
    """Protect a group's readable records with one ``protect_many`` call and write each.

    A unit that cannot be read or written fails alone. What the file libraries warn or log
    while a unit is read or written goes into its entries; what they say while the group is
    protected goes into the entries of every unit of the group.
    """
    clean = [r for r in got.records if isinstance(r, Record)]
    with library_messages() as shared:
        protected = iter(ctx.method.protect_many(clean) if clean else [])
    results = []
    for unit, record, messages, stamp in zip(units, got.records, got.said, got.stamps):
        if isinstance(record, Record):
            with library_messages() as written:
                record = _finish(unit, record, next(protected), ctx)
            messages = join_messages(messages, shared, written)
        for entry in record.entries:
            entry.warnings = list(messages) or None
        record.stamps = stamp
        results.append(record)
    return results


#: Input bytes of the next group that :func:`process_stream` reads ahead at most (a larger group is
#: read when its turn comes, so memory holds one large series, not two).
READ_AHEAD_BYTES = 128 << 20


def _input_bytes(units: list[Unit]) -> int:
    """Bytes of the group's input files (a file that cannot be sized counts as too large)."""
    total = 0
    for unit in units:
        for path in unit.files:
            try:
                total += Path(path).stat().st_size
            except OSError:
                return READ_AHEAD_BYTES + 1
    return total


def process_stream(units: list[Unit], ctx: WorkContext) -> Iterator[UnitResult]:
    """:func:`process_batch`'s results group by group, the next group read in a thread meanwhile.

    While one group is protected and written, a reader thread stamps and reads the next (at most
    :data:`READ_AHEAD_BYTES` of input): decoding lets go of the interpreter, so reading overlaps
    the protection on a second core. The library messages of each unit stay its own
    (:func:`~ulmed.io.notices.routed_messages`). Results and bytes are those of :func:`process_batch`.
    """
    groups = _groups(units, ctx.method.batch_hint)
    with routed_messages(), concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ulmed-read") as reader:
        ahead: concurrent.futures.Future[_Read] | None = None
        for i, group in enumerate(groups):
            got = ahead.result() if ahead is not None else _read_group(group, ctx)
            upcoming = groups[i + 1] if i + 1 < len(groups) else None
            small = upcoming is not None and _input_bytes(upcoming) <= READ_AHEAD_BYTES
            ahead = reader.submit(_read_group, upcoming, ctx) if upcoming is not None and small else None
            yield from _finish_group(group, got, ctx)


def process_batch(units: list[Unit], ctx: WorkContext) -> list[UnitResult]:
    """Protect (or copy) a batch of units and write their outputs (the task of a worker process or Ray task).

    Consecutive images go through the method's :meth:`~ulmed.core.method.ProtectionMethod.protect_many`
    together, up to its ``batch_hint`` at a time (:func:`_groups`); the results are those of
    one unit at a time, in the order of ``units``.

    Returns:
        One result per unit: its manifest entries; ``failed`` entries and ``error`` for a bad input.

    Raises:
        OutputError: An output cannot be written (this stops the run: the next unit would fail too).
    """
    groups = _groups(units, ctx.method.batch_hint)
    return [result for group in groups for result in _finish_group(group, _read_group(group, ctx), ctx)]

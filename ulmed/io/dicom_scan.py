"""Sort the files of a DICOM tree into image series, from their headers only.

:func:`scan_dicom` classifies every file (an image instance, a non-image object such as SR,
SEG, RTSTRUCT, PR, KO or DICOMDIR that the pipeline copies, or a bad file with the reason),
keeps one file per SOPInstanceUID, groups the images into series in slice order and gives
each series a stable key that names no patient.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ulmed.choices import StrEnum
from ulmed.errors import cannot_read
from ulmed.io.dicom_dataset import (
    DEFER,
    PIXEL_DATA,
    floats,
    is_dicom_file,
    relative_to,
    short_reason,
    slice_normal,
    unsupported,
)
from ulmed.io.dicom_series import DicomScan, DicomSeries
from ulmed.io.notices import library_messages

__all__ = ["DicomScan", "DicomSeries", "scan_dicom", "series_key_hash"]

log = logging.getLogger("ulmed")
# SOP classes that are not images to protect although some carry Pixel Data (waveforms, PR,
# parametric maps, SEG/registrations, real-world value maps, surfaces, SR/KO, documents, RT).
_NON_IMAGE_SOP_ROOTS = tuple(
    "1.2.840.10008.5.1.4.1.1." + s
    for s in ("9", "11", "30", "66", "67", "68", "88", "104", *(f"481.{i}" for i in range(2, 10)))
)
#: The key salt of scans that are given none: new for every process, so that no key printed by
#: ``ulmed info`` or a test can be recomputed from the UIDs of the source.
_PROCESS_SALT = secrets.token_hex(16)


class _Kind(StrEnum):
    """What a file's header says it is."""

    IMAGE = "image"
    NON_IMAGE = "non_image"
    BAD = "bad"


@dataclass(frozen=True)
class _Header:
    path: Path
    series_uid: str
    sop_uid: str
    shape: tuple[int, int, int, int]  # rows, columns, samples per pixel, frames
    iop: tuple[float, ...] | None
    ipp: tuple[float, ...] | None
    instance: int


#: A classified file: ``(path, IMAGE, _Header)`` or ``(path, NON_IMAGE, SOPInstanceUID)``.
_Found = tuple[Path, _Kind, _Header | str]


def series_key_hash(uid: str, salt: str, n: int = 12) -> str:
    """A short keyed hash of a UID: stable for one salt, not derivable from the UID without it."""
    return hmac.new(salt.encode("utf-8"), uid.encode("utf-8"), hashlib.sha256).hexdigest()[:n]


def _read_header(path: Path) -> tuple[Dataset | None, str]:
    """The header of ``path`` (large values left on disk), or None and why it cannot be used."""
    if not is_dicom_file(path):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:  # is_dicom_file says no for a file it cannot open
            return None, cannot_read(exc)
        return None, "not a DICOM file (no 'DICM' marker, no SOP Class UID); remove it from the input folder"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, force=True, defer_size=DEFER)  # large values stay on disk
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
        return None, f"unreadable DICOM ({short_reason(exc)}); re-export the file or remove it"
    if any("end of file" in str(w.message).lower() for w in caught):
        return None, "the file is truncated (it ends inside its data); copy or re-export it again"
    return ds, ""


def _image_problem(ds: Dataset, path: Path, elem: object) -> str | None:
    """Why an image instance with pixel data ``elem`` cannot be protected, or None."""
    length, tell = getattr(elem, "length", 0xFFFFFFFF), getattr(elem, "value_tell", None)
    if length != 0xFFFFFFFF and tell is not None and tell + length > Path(path).stat().st_size:
        return "the file is truncated (pixel data shorter than its header says); copy or re-export it again"
    missing = [k for k in ("SeriesInstanceUID", "SOPInstanceUID", "Rows", "Columns") if not ds.get(k)]
    if missing:
        return f"image without {', '.join(missing)}; fix the export or remove the file"
    return unsupported(ds)


def _image_header(ds: Dataset, path: Path) -> _Header:
    instance = int(ds.InstanceNumber) if str(ds.get("InstanceNumber", "")).strip().lstrip("-").isdigit() else 0
    shape = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1), int(ds.get("NumberOfFrames") or 1))
    return _Header(
        Path(path), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), shape,
        floats(ds, "ImageOrientationPatient"), floats(ds, "ImagePositionPatient"), instance,
    )


def _classify(path: Path) -> tuple[_Kind, _Header | str]:
    """``(IMAGE, _Header)``, ``(NON_IMAGE, SOPInstanceUID)`` or ``(BAD, reason)`` from the header."""
    ds, reason = _read_header(path)
    if ds is None:
        return _Kind.BAD, reason
    sop = str(ds.get("SOPClassUID", "") or "")
    instance_uid = str(ds.get("SOPInstanceUID", "") or "")
    image_class = not any(sop == r or sop.startswith(r + ".") for r in _NON_IMAGE_SOP_ROOTS)
    elem = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if elem is None:
        looks_like_image = "Rows" in ds or UID(sop).name.endswith("Image Storage")  # cut before Rows: still an image
        if image_class and looks_like_image and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            return _Kind.BAD, "image header without pixel data (truncated?); copy or re-export the file again"
        return _Kind.NON_IMAGE, instance_uid
    if not image_class:
        return _Kind.NON_IMAGE, instance_uid
    if problem := _image_problem(ds, path, elem):
        return _Kind.BAD, problem
    return _Kind.IMAGE, _image_header(ds, path)


def _order(members: list[_Header]) -> list[_Header]:
    """Sort by position along the slice normal, else by InstanceNumber (then file name)."""
    normal = slice_normal(members[0].iop)
    if normal is not None and all(h.ipp is not None and len(h.ipp) == 3 for h in members):
        return sorted(members, key=lambda h: (float(np.dot(h.ipp, normal)), h.instance, str(h.path)))
    return sorted(members, key=lambda h: (h.instance, str(h.path)))


def _classify_all(files: Sequence[Path]) -> tuple[list[_Found], list[tuple[Path, str]]]:
    """The usable files as ``(path, kind, info)``, and ``(path, reason)`` of the bad ones."""
    found: list[_Found] = []
    bad: list[tuple[Path, str]] = []
    for path in files:
        with library_messages():  # said again when the file is read: kept with its manifest entry then
            kind, info = _classify(Path(path))
        if kind is _Kind.BAD:
            bad.append((Path(path), info))
        else:
            found.append((Path(path), kind, info))
    return found, bad


def _first_instances(found: list[_Found], root: Path) -> tuple[list[_Found], list[tuple[Path, str]]]:
    """Keep one file of each SOPInstanceUID: real files before links, then the first by path.

    Returns:
        The ``(path, kind, info)`` kept, and ``(path, reason)`` of the duplicates left out.
    """
    first: dict[str, Path] = {}
    kept, skipped = [], []
    for path, kind, info in sorted(found, key=lambda f: (f[0].is_symlink(), f[0])):
        uid = info.sop_uid if kind is _Kind.IMAGE else info
        if uid and uid in first:
            done = "written" if kind is _Kind.IMAGE else "copied"
            reason = f"duplicate of {relative_to(first[uid], root).as_posix()} (same SOPInstanceUID); {done} once"
            log.warning("skipped %s: %s", path, reason)
            skipped.append((path, reason))
            continue
        if uid:
            first[uid] = path
        kept.append((path, kind, info))
    return kept, skipped


def _group(headers: list[_Header]) -> list[list[_Header]]:
    """Group image headers: one SeriesInstanceUID, size, samples and orientation per group.

    A multi-frame instance is a group of its own. Groups come in the order of their first file.
    """
    buckets: dict[tuple[str, tuple[int, ...]], list[list[_Header]]] = {}
    for info in headers:
        bucket = buckets.setdefault((info.series_uid, info.shape), [])
        for members in bucket if info.shape[3] == 1 else []:  # multi-frame: a series of its own
            iop = members[0].iop
            if (iop is None) == (info.iop is None) and (iop is None or np.allclose(iop, info.iop, atol=1e-3)):
                members.append(info)
                break
        else:
            bucket.append([info])
    return [members for bucket in buckets.values() for members in bucket]


def _split_reason(shapes: set[tuple[int, int, int, int]]) -> str:
    """Why the parts of one SeriesInstanceUID, with these shapes, are apart."""
    if len({s[:2] for s in shapes}) > 1:
        return "its slices differ in size (Rows x Columns)"
    if len({s[2] for s in shapes}) > 1:
        return "its slices differ in samples per pixel"
    if any(s[3] > 1 for s in shapes):
        return "it holds several multi-frame instances, each a record of its own"
    return "its slices differ in orientation"


def _split_notes(groups: list[list[_Header]], root: Path) -> dict[str, str]:
    """Why each SeriesInstanceUID that became several records was split, by UID (warned once each)."""
    parts: dict[str, list[list[_Header]]] = {}
    for members in groups:
        parts.setdefault(members[0].series_uid, []).append(members)
    notes = {}
    for uid, split in parts.items():
        if len(split) < 2:
            continue
        why = _split_reason({members[0].shape for members in split})
        notes[uid] = (f"series split into {len(split)} parts because {why}; "
                      "each part is protected apart, all keep one new SeriesInstanceUID")
        log.warning("series in %s split into %d parts because %s", relative_to(split[0][0].path, root).parent,
                    len(split), why)
    return notes


def _series(groups: list[list[_Header]], root: Path, salt: str) -> list[DicomSeries]:
    """One series per group, in slice order, keyed by folder and keyed hashes; sorted by key."""
    notes = _split_notes(groups, root)
    counts: dict[str, int] = {}
    for members in groups:
        counts[members[0].series_uid] = counts.get(members[0].series_uid, 0) + 1
    series = []
    for members in map(_order, groups):
        uid = members[0].series_uid
        key = f"{relative_to(members[0].path, root).parent.as_posix()}/{series_key_hash(uid, salt)}"
        if counts[uid] > 1:
            key += "-" + series_key_hash(members[0].sop_uid, salt, 8)
        series.append(DicomSeries(series_uid=uid, files=[h.path for h in members], key=key, note=notes.get(uid)))
    return sorted(series, key=lambda s: s.key)


def scan_dicom(root: Path, files: Sequence[Path], key_salt: str | None = None) -> DicomScan:
    """Group DICOM files into image series from their headers (pixel data is not decoded).

    Files of one SeriesInstanceUID form one series when they share size, samples per pixel
    and orientation; a multi-frame instance is a series of its own. When a SeriesInstanceUID
    splits (localizers in three planes), the keys add a short hash of the first SOP Instance UID.
    The hashes are keyed by ``key_salt``: without the salt, nobody holding the source can link a
    key (printed, or in a manifest) back to its series.

    Args:
        root: Input folder; keys are relative to it.
        files: Candidate files under ``root``.
        key_salt: The secret that keys the hashes (a run's salt; default: one per process).

    Of several files with one SOPInstanceUID (a copy in another folder, a link) only the first
    is used (real files before links, then by path); the others are ``skipped``, with a warning.
    A series that splits gets a ``note`` saying why, and a warning.

    Returns:
        The series (sorted by key), the non-image files, the bad files and the duplicates.
    """
    found, bad = _classify_all(files)
    kept, skipped = _first_instances(found, root)
    non_image = sorted(path for path, kind, _ in kept if kind is _Kind.NON_IMAGE)
    groups = _group([info for _, kind, info in kept if kind is _Kind.IMAGE])
    series = _series(groups, root, key_salt or _PROCESS_SALT)
    return DicomScan(series=series, non_image=non_image, bad=bad, skipped=skipped)

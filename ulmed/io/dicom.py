"""DICOM reader and writer: one image series in, one :class:`Record` out, and back.

:func:`scan_dicom` sorts files into image series (in slice order), non-image objects
(SR, SEG, RTSTRUCT, PR, KO, DICOMDIR, ...: the pipeline copies them) and bad files.
:func:`read_series` gives a channel-first record of modality values (stored x
RescaleSlope + RescaleIntercept). :func:`write_series` writes every instance back with
all attributes kept except the pixel data, the SOP Instance and Series Instance UIDs
(new, deterministic), ImageType/FrameType, DerivationDescription and the transfer syntax
(Explicit VR Little Endian, or a lossless one on request); with ``WriteOptions.deidentify``
it also de-identifies every instance (:mod:`ulmed.io.deidentify`).
"""

from __future__ import annotations

import hashlib
import logging
import hmac
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, PYDICOM_ROOT_UID, UID, ExplicitVRLittleEndian, generate_uid
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from ulmed.errors import ConfigError, InputError, MissingDependencyError, OutputError, os_reason
from ulmed.io.atomic import atomic_path
from ulmed.io.base import WriteOptions
from ulmed.io.deidentify import deidentify_dataset
from ulmed.io.dicom_pixels import describe_values, size_mismatch
from ulmed.io.notices import library_messages
from ulmed.io.record import IntensityMapping, Record

__all__ = ["DicomHandle", "DicomScan", "DicomSeries", "is_dicom_file", "new_uid", "read_series", "scan_dicom",
           "write_series"]

log = logging.getLogger("ulmed")
CODECS_HINT = 'install the DICOM codecs with: pip install "ulmed[codecs]"'
_ENCODINGS = {"rle": RLELossless, "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless}
_PIXEL_DATA = 0x7FE00010
_LAYOUT = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")
_DEFER = "256 KB"  # larger values are left unread while scanning headers
# SOP classes that are not images to protect although some carry Pixel Data (waveforms, PR,
# parametric maps, SEG/registrations, real-world value maps, surfaces, SR/KO, documents, RT).
_NON_IMAGE_SOP_ROOTS = tuple(
    "1.2.840.10008.5.1.4.1.1." + s
    for s in ("9", "11", "30", "66", "67", "68", "88", "104", *(f"481.{i}" for i in range(2, 10)))
)


@dataclass
class DicomSeries:
    """One image series: the files that :func:`read_series` turns into one record.

    Args:
        series_uid: The input SeriesInstanceUID.
        files: The instances, in slice order.
        key: Stable id: the first file's folder relative to the scan root, ``/`` and a short
            hash of the SeriesInstanceUID (never patient names or IDs).
        note: Why its SeriesInstanceUID was split into several records, when it was.
    """

    series_uid: str
    files: list[Path]
    key: str
    note: str | None = None


@dataclass
class DicomScan:
    """What :func:`scan_dicom` found.

    Args:
        series: Image series to protect.
        non_image: DICOM objects without an image to protect; the pipeline copies them.
        bad: ``(path, reason)`` for files that cannot be used; the reason says what to do.
        skipped: ``(path, reason)`` for files left out on purpose: another copy of the same
            instance (SOPInstanceUID) is used instead.
    """

    series: list[DicomSeries]
    non_image: list[Path]
    bad: list[tuple[Path, str]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class DicomHandle:
    """What :func:`write_series` needs; the datasets are re-read from ``files`` when writing.

    ``frames`` counts the frames of each file; ``slopes``/``intercepts`` hold the rescale of
    every frame of the series; ``stored_dtype`` and ``stored_range`` (from BitsAllocated,
    PixelRepresentation and BitsStored) say how native values are stored back.
    """

    files: tuple[Path, ...]
    frames: tuple[int, ...]
    slopes: np.ndarray
    intercepts: np.ndarray
    stored_dtype: str
    stored_range: tuple[int, int]
    series_uid: str
    multi_frame: bool


@dataclass(frozen=True)
class _Header:
    path: Path
    series_uid: str
    sop_uid: str
    shape: tuple[int, int, int, int]  # rows, columns, samples per pixel, frames
    iop: tuple[float, ...] | None
    ipp: tuple[float, ...] | None
    instance: int


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is DICOM: ``DICM`` at offset 128, or a readable SOP Class UID. Never raises."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        if len(head) == 132 and head[128:] == b"DICM":
            return True
        with library_messages(forward=False):  # a probe: what it says is not about a DICOM file
            ds = pydicom.dcmread(path, force=True, defer_size=1024, specific_tags=["SOPClassUID"])
        uid = str(ds.get("SOPClassUID", "") or "")
        return bool(uid) and UID(uid).is_valid
    except Exception:  # noqa: BLE001 - any failure means "not DICOM"
        return False


def new_uid(original_uid: str, salt: str) -> str:
    """A valid DICOM UID (<= 64 characters) derived deterministically from a UID and a salt.

    Args:
        original_uid: The UID being replaced.
        salt: Run salt: the same salt gives the same UID, another salt another UID.

    Returns:
        A UID under pydicom's root made from a SHA-512 of salt and UID.
    """
    # generate_uid joins its sources without separator; the length prefix keeps the pair unambiguous
    return str(generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[f"ulmed:{len(salt)}:{salt}:", str(original_uid)]))


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


#: The key salt of scans that are given none: new for every process, so that no key printed by
#: ``ulmed info`` or a test can be recomputed from the UIDs of the source.
_PROCESS_SALT = secrets.token_hex(16)


def series_key_hash(uid: str, salt: str, n: int = 12) -> str:
    """A short keyed hash of a UID: stable for one salt, not derivable from the UID without it."""
    return hmac.new(salt.encode("utf-8"), uid.encode("utf-8"), hashlib.sha256).hexdigest()[:n]


def _rel(path: Path, root: Path) -> Path:
    try:
        return Path(path).relative_to(root)
    except ValueError:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve())
        except ValueError as exc:
            raise InputError(f"is not inside the input folder {root}; pass files from under it", path) from exc


def _floats(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    try:
        value = ds.get(keyword)
        return tuple(float(v) for v in value) if value is not None and len(value) else None
    except (TypeError, ValueError):
        return None


def _normal(iop: Sequence[float] | None) -> np.ndarray | None:
    if iop is None or len(iop) != 6:
        return None
    n = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    return n / np.linalg.norm(n) if np.linalg.norm(n) > 1e-6 else None


def _unsupported(ds: Dataset) -> str | None:
    """Why this image cannot be protected, or None."""
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        return "palette-colour images are not supported; convert the series to RGB or leave it out"
    if int(ds.get("SamplesPerPixel") or 1) not in (1, 3):
        return f"{ds.SamplesPerPixel} samples per pixel are not supported; convert to grey or RGB"
    if int(ds.get("BitsAllocated") or 0) not in (8, 16, 32):
        return f"BitsAllocated={ds.get('BitsAllocated')} is not supported (8, 16 or 32 are); leave the file out"
    return None


def _classify(path: Path) -> tuple[str, Any]:
    """``("image", _Header)``, ``("non_image", SOPInstanceUID)`` or ``("bad", reason)`` from the header."""
    if not is_dicom_file(path):
        return "bad", "not a DICOM file (no 'DICM' marker, no SOP Class UID); remove it from the input folder"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, force=True, defer_size=_DEFER)  # large values stay on disk
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
        return "bad", f"unreadable DICOM ({_short(exc)}); re-export the file or remove it"
    if any("end of file" in str(w.message).lower() for w in caught):
        return "bad", "the file is truncated (it ends inside its data); copy or re-export it again"
    sop = str(ds.get("SOPClassUID", "") or "")
    instance_uid = str(ds.get("SOPInstanceUID", "") or "")
    image_class = not any(sop == r or sop.startswith(r + ".") for r in _NON_IMAGE_SOP_ROOTS)
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if elem is None:
        looks_like_image = "Rows" in ds or UID(sop).name.endswith("Image Storage")  # cut before Rows: still an image
        if image_class and looks_like_image and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            return "bad", "image header without pixel data (truncated?); copy or re-export the file again"
        return "non_image", instance_uid
    if not image_class:
        return "non_image", instance_uid
    length, tell = getattr(elem, "length", 0xFFFFFFFF), getattr(elem, "value_tell", None)
    if length != 0xFFFFFFFF and tell is not None and tell + length > Path(path).stat().st_size:
        return "bad", "the file is truncated (pixel data shorter than its header says); copy or re-export it again"
    missing = [k for k in ("SeriesInstanceUID", "SOPInstanceUID", "Rows", "Columns") if not ds.get(k)]
    if missing:
        return "bad", f"image without {', '.join(missing)}; fix the export or remove the file"
    if reason := _unsupported(ds):
        return "bad", reason
    instance = int(ds.InstanceNumber) if str(ds.get("InstanceNumber", "")).strip().lstrip("-").isdigit() else 0
    shape = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1), int(ds.get("NumberOfFrames") or 1))
    return "image", _Header(
        Path(path), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), shape,
        _floats(ds, "ImageOrientationPatient"), _floats(ds, "ImagePositionPatient"), instance,
    )


def _order(members: list[_Header]) -> list[_Header]:
    """Sort by position along the slice normal, else by InstanceNumber (then file name)."""
    normal = _normal(members[0].iop)
    if normal is not None and all(h.ipp is not None and len(h.ipp) == 3 for h in members):
        return sorted(members, key=lambda h: (float(np.dot(h.ipp, normal)), h.instance, str(h.path)))
    return sorted(members, key=lambda h: (h.instance, str(h.path)))


def _first_instances(
    found: list[tuple[Path, str, Any]], root: Path
) -> tuple[list[tuple[Path, str, Any]], list[tuple[Path, str]]]:
    """Keep one file of each SOPInstanceUID: real files before links, then the first by path.

    Returns:
        The ``(path, kind, info)`` kept, and ``(path, reason)`` of the duplicates left out.
    """
    first: dict[str, Path] = {}
    kept, skipped = [], []
    for path, kind, info in sorted(found, key=lambda f: (f[0].is_symlink(), f[0])):
        uid = info.sop_uid if kind == "image" else info
        if uid and uid in first:
            done = "written" if kind == "image" else "copied"
            reason = f"duplicate of {_rel(first[uid], root).as_posix()} (same SOPInstanceUID); {done} once"
            log.warning("skipped %s: %s", path, reason)
            skipped.append((path, reason))
            continue
        if uid:
            first[uid] = path
        kept.append((path, kind, info))
    return kept, skipped


def _split_notes(groups: list[list[_Header]], root: Path) -> dict[str, str]:
    """Why each SeriesInstanceUID that became several records was split, by UID (warned once each)."""
    parts: dict[str, list[list[_Header]]] = {}
    for members in groups:
        parts.setdefault(members[0].series_uid, []).append(members)
    notes = {}
    for uid, split in parts.items():
        if len(split) < 2:
            continue
        shapes = {members[0].shape for members in split}
        if len({s[:2] for s in shapes}) > 1:
            why = "its slices differ in size (Rows x Columns)"
        elif len({s[2] for s in shapes}) > 1:
            why = "its slices differ in samples per pixel"
        elif any(s[3] > 1 for s in shapes):
            why = "it holds several multi-frame instances, each a record of its own"
        else:
            why = "its slices differ in orientation"
        notes[uid] = (f"series split into {len(split)} parts because {why}; "
                      "each part is protected apart, all keep one new SeriesInstanceUID")
        log.warning("series in %s split into %d parts because %s", _rel(split[0][0].path, root).parent, len(split), why)
    return notes


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
    buckets: dict[tuple[str, tuple[int, ...]], list[list[_Header]]] = {}
    non_image: list[Path] = []
    bad: list[tuple[Path, str]] = []
    found: list[tuple[Path, str, Any]] = []
    for path in files:
        with library_messages():  # said again when the file is read: kept with its manifest entry then
            kind, info = _classify(Path(path))
        if kind == "bad":
            bad.append((Path(path), info))
        else:
            found.append((Path(path), kind, info))
    kept, skipped = _first_instances(found, root)
    for path, kind, info in kept:
        if kind == "non_image":
            non_image.append(path)
        else:
            bucket = buckets.setdefault((info.series_uid, info.shape), [])
            for members in bucket if info.shape[3] == 1 else []:  # multi-frame: a series of its own
                iop = members[0].iop
                if (iop is None) == (info.iop is None) and (iop is None or np.allclose(iop, info.iop, atol=1e-3)):
                    members.append(info)
                    break
            else:
                bucket.append([info])
    groups = [members for bucket in buckets.values() for members in bucket]
    notes = _split_notes(groups, root)
    counts: dict[str, int] = {}
    for members in groups:
        counts[members[0].series_uid] = counts.get(members[0].series_uid, 0) + 1
    series = []
    salt = key_salt or _PROCESS_SALT
    for members in map(_order, groups):
        uid = members[0].series_uid
        key = f"{_rel(members[0].path, root).parent.as_posix()}/{series_key_hash(uid, salt)}"
        if counts[uid] > 1:
            key += "-" + series_key_hash(members[0].sop_uid, salt, 8)
        series.append(DicomSeries(series_uid=uid, files=[h.path for h in members], key=key))
    for s in series:
        s.note = notes.get(s.series_uid)
    return DicomScan(series=sorted(series, key=lambda s: s.key), non_image=sorted(non_image), bad=bad, skipped=skipped)


def _read(path: Path, defer: bool = False) -> Dataset:
    try:
        with library_messages():  # kept by an enclosing block (read_series, a unit of a run), else dropped
            return pydicom.dcmread(path, force=True, defer_size=_DEFER if defer else None)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"unreadable DICOM ({_short(exc)}); re-export the file or remove it", path) from exc


def _transfer_syntax(ds: Dataset) -> UID:
    return UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ExplicitVRLittleEndian))


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    """Stored values as (frames, rows, cols[, 3]); pydicom converts YBR to RGB."""
    ts = _transfer_syntax(ds)
    name = ts.name
    if reason := size_mismatch(ds, ts):
        raise InputError(reason, path)
    try:
        arr = ds.pixel_array
    except RuntimeError as exc:
        if "missing dependencies" in str(exc):  # pydicom's message when no plugin is installed
            raise MissingDependencyError(f"cannot decode '{name}' pixel data, a codec is missing; {CODECS_HINT}", path) from exc
        raise InputError(f"cannot decode the pixel data ({_short(exc)}); re-export the file uncompressed", path) from exc
    except NotImplementedError as exc:
        raise InputError(f"transfer syntax '{name}' cannot be decoded; re-export the series uncompressed", path) from exc
    except Exception as exc:  # noqa: BLE001
        reason = f"cannot decode the pixel data ({_short(exc)}); the file may be truncated, re-export it"
        raise InputError(reason, path) from exc
    except BaseException as exc:  # a codec's Rust panic (pyo3 PanicException) is no Exception
        if type(exc).__name__ != "PanicException":
            raise
        raise InputError(f"the decoder failed on the pixel data ({_short(exc)}); re-export the file uncompressed", path) from exc
    return arr[None] if arr.ndim == (3 if int(ds.get("SamplesPerPixel") or 1) == 3 else 2) else arr


def _fg(ds: Dataset, frame: int, seq: str, attr: str) -> Any:
    """``attr`` from the per-frame functional group of ``frame``, else from the shared one."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and len(items) > idx and items[idx].get(seq):
            value = items[idx].get(seq)[0].get(attr)
            if value not in (None, ""):
                return value
    return None


def _rescale(ds: Dataset, frames: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame slope and intercept (1 and 0 if absent, or with a non-linear Modality LUT)."""
    slopes, intercepts = np.ones(frames), np.zeros(frames)
    if "ModalityLUTSequence" in ds:  # protect the stored values themselves
        return slopes, intercepts
    for i in range(frames):
        s, b = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        s = _fg(ds, i, "PixelValueTransformationSequence", "RescaleSlope") if s in (None, "") else s
        b = _fg(ds, i, "PixelValueTransformationSequence", "RescaleIntercept") if b in (None, "") else b
        slopes[i], intercepts[i] = (1.0 if s in (None, "") else float(s)), (0.0 if b in (None, "") else float(b))
    if not (np.all(np.isfinite(slopes)) and np.all(slopes != 0) and np.all(np.isfinite(intercepts))):
        raise InputError("RescaleSlope is 0 or not a number; fix the export", path)
    return slopes, intercepts


def read_series(series: DicomSeries, root: Path) -> Record:
    """Read a series into a channel-first record of modality values.

    What pydicom and the codec plugins warn or log while reading goes to
    ``meta["warnings"]`` (:func:`ulmed.io.notices.library_messages`), not to the terminal.

    Args:
        series: A series from :func:`scan_dicom`.
        root: The scan root (used in messages only).

    Returns:
        ``(C, N, rows, cols)`` with spatial_dims 3 for several slices or frames, else
        ``(C, rows, cols)`` with spatial_dims 2; C is 1 (grey) or 3 (RGB). Integer
        slopes and intercepts give an integer image, others float64.

    Raises:
        InputError: A file cannot be read or decoded, or does not fit the series.
        MissingDependencyError: A compressed transfer syntax needs a codec plugin.
    """
    with library_messages() as messages:
        record = _read_series(series, root)
    if messages:
        record.meta["warnings"] = messages
    return record


def _read_series(series: DicomSeries, root: Path) -> Record:
    if not series.files:
        raise InputError(f"series {series.key} has no files; rescan the folder", root)
    stored, frames, slopes, intercepts, positions = [], [], [], [], []
    first: Dataset | None = None
    for path in series.files:
        ds = _read(path)
        if reason := _unsupported(ds):
            raise InputError(reason, path)
        if first is None:
            first = ds
        if any(int(ds.get(k) or 0) != int(first.get(k) or 0) for k in _LAYOUT):
            raise InputError(f"differs from the first file of series {series.key} in size or bits; rescan the folder", path)
        arr = _decode(ds, path)
        s, b = _rescale(ds, arr.shape[0], path)
        stored.append(arr)
        frames.append(arr.shape[0])
        slopes.append(s)
        intercepts.append(b)
        normal, ipp = _normal(_floats(first, "ImageOrientationPatient")), _floats(ds, "ImagePositionPatient")
        if normal is not None and ipp is not None and len(ipp) == 3:
            positions.append(float(np.dot(ipp, normal)))
    assert first is not None
    color = stored[0].ndim == 4
    data = np.concatenate(stored, axis=0)  # (N, rows, cols[, 3])
    del stored
    data = np.moveaxis(data, -1, 0) if color else data[None]
    s_all, b_all = np.concatenate(slopes), np.concatenate(intercepts)
    bits, signed, alloc = int(first.BitsStored), int(first.PixelRepresentation) == 1, int(first.BitsAllocated)
    smin, smax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    integral = np.all(s_all == np.round(s_all)) and np.all(b_all == np.round(b_all))
    dtype = (np.int64 if alloc == 32 else np.int32) if integral else np.float64
    native = data.astype(dtype) * s_all.astype(dtype)[None, :, None, None] + b_all.astype(dtype)[None, :, None, None]
    del data
    ends = np.concatenate([smin * s_all + b_all, smax * s_all + b_all])  # per-frame valid range, either slope sign
    modality = str(first.get("Modality", "") or "")
    rescale_type = first.get("RescaleType") or _fg(first, 0, "PixelValueTransformationSequence", "RescaleType")
    unit = "HU" if modality == "CT" and str(rescale_type or "HU").strip().upper() == "HU" else "value"
    mapping = IntensityMapping.for_data(native, float(ends.min()), float(ends.max()), float(np.abs(s_all).max()), unit,
                                        robust=True)
    spatial_dims = 3 if native.shape[1] > 1 else 2
    native = native if spatial_dims == 3 else native[:, 0]
    pixel = _floats(first, "PixelSpacing") or _fg(first, 0, "PixelMeasuresSequence", "PixelSpacing")
    spacing: list[float | None] = [float(v) for v in pixel] if pixel else [None, None]
    if spatial_dims == 3:
        if len(positions) > 1 and len(positions) == len(series.files):
            gap: Any = float(np.median(np.abs(np.diff(positions))))
        else:
            gap = first.get("SpacingBetweenSlices") or _fg(first, 0, "PixelMeasuresSequence", "SpacingBetweenSlices")
            gap = gap or first.get("SliceThickness") or _fg(first, 0, "PixelMeasuresSequence", "SliceThickness")
        spacing.insert(0, float(gap) if gap not in (None, "") else None)
    stored_dtype = np.dtype(f"{'i' if signed else 'u'}{alloc // 8}")
    meta = {"modality": modality, "shape": tuple(int(v) for v in native.shape), "spacing": tuple(spacing),
            "dtype": stored_dtype.name, "photometric": "RGB" if color else str(first.PhotometricInterpretation),
            "transfer_syntax": str(_transfer_syntax(first)), "n_files": len(series.files),
            "sop_class": str(first.get("SOPClassUID", ""))}
    handle = DicomHandle(
        files=tuple(Path(p) for p in series.files), frames=tuple(frames), slopes=s_all, intercepts=b_all,
        stored_dtype=stored_dtype.str, stored_range=(smin, smax), series_uid=series.series_uid,
        multi_frame="NumberOfFrames" in first,
    )
    # slices with their own RescaleSlope store in steps of their own (quantisation keeps each one's grid)
    steps = np.abs(s_all)[None, :, None, None] if spatial_dims == 3 and np.unique(np.abs(s_all)).size > 1 else None
    return Record(key=series.key, image=native, mapping=mapping, spatial_dims=spatial_dims, kind="dicom",
                  handle=handle, meta=meta, quantum_map=steps)


def _set_pixels(ds: Dataset, block: np.ndarray, handle: DicomHandle, options: WriteOptions, path: Path) -> None:
    """Put stored values ``block`` (C, frames, rows, cols) into ``ds`` in the requested transfer syntax."""
    swap = not _transfer_syntax(ds).is_little_endian
    arr = np.moveaxis(block, 0, -1) if block.shape[0] == 3 else block[0]
    little = np.dtype(handle.stored_dtype).newbyteorder("<")
    data = np.ascontiguousarray(arr if handle.multi_frame else arr[0]).astype(little)
    for kw in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):  # encapsulation only
        if kw in ds:
            del ds[kw]
    raw = data.tobytes()
    ds.add_new(_PIXEL_DATA, "OB" if int(ds.BitsAllocated) <= 8 else "OW", raw + b"\0" * (len(raw) % 2))
    describe_values(ds, int(block.min()), int(block.max()), signed=np.dtype(handle.stored_dtype).kind == "i")
    # Typed elements for the writer (raw ones may lack a VR); big-endian OW/OL/OF/OD/OV values
    # are kept as raw bytes by pydicom and must be swapped by hand.
    sizes = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
    for elem in ds.iterall() if swap else ():
        if elem.VR in sizes and isinstance(elem.value, bytes) and elem.tag != _PIXEL_DATA:
            elem.value = np.frombuffer(elem.value, dtype=f">u{sizes[elem.VR]}").astype(f"<u{sizes[elem.VR]}").tobytes()
    if block.shape[0] == 3:
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if options.dicom_encoding in _ENCODINGS:
        uid = _ENCODINGS[options.dicom_encoding]
        if block.shape[0] == 3 and uid == JPEG2000Lossless:
            ds.PhotometricInterpretation = "YBR_RCT"  # colour J2K lossless uses the reversible transform
        try:
            ds.compress(uid, generate_instance_uid=False)
        except RuntimeError as exc:
            if "missing dependencies" in str(exc):
                raise MissingDependencyError(f"cannot encode '{uid.name}', an encoder is missing; {CODECS_HINT}", path) from exc
            raise OutputError(f"cannot encode '{uid.name}' ({_short(exc)}); use --dicom-encoding explicit", path) from exc


def _mark_derived(ds: Dataset) -> None:
    """ImageType DERIVED\\SECONDARY + the original values from the third on; FrameType follows.

    Enhanced (functional-group) IODs only allow PRIMARY as value 2, so it is kept there;
    value 1 of every FrameType becomes DERIVED to agree with ImageType.
    """
    old = ds.get("ImageType") or []
    old = [old] if isinstance(old, str) else list(old)
    sop_name = UID(str(ds.get("SOPClassUID", ""))).name
    enhanced = "SharedFunctionalGroupsSequence" in ds or "Enhanced" in sop_name or "Legacy Converted" in sop_name
    ds.ImageType = ["DERIVED", (old[1] if len(old) > 1 else "PRIMARY") if enhanced else "SECONDARY", *old[2:]]
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds.get(groups) or []:
            for elem in item:
                if elem.keyword.endswith("FrameTypeSequence") and elem.value and "FrameType" in elem.value[0]:
                    elem.value[0].FrameType = ["DERIVED", *list(elem.value[0].FrameType)[1:]]


def write_series(record: Record, root: Path, out_root: Path, options: WriteOptions) -> list[tuple[Path, Path]]:
    """Write every instance of a record's series to the same relative path under ``out_root``.

    Native values become stored values ``round((native - intercept) / slope)`` clipped to the
    BitsStored range and cast to the stored dtype. New SOP Instance UIDs and one new Series
    Instance UID come from :func:`new_uid` with ``options.uid_salt``. Inputs are never modified.

    With ``options.deidentify`` every dataset is de-identified right after it is read (its
    original pixel data dropped first, so the de-identifier never sees or loads it; ours is
    set afterwards), and the new UIDs are derived from the de-identified ones:
    SOP = ``new_uid(D(sop), salt)``, Series = ``new_uid(D(series), salt)``, Study = ``D(study)``,
    where ``D`` is dicognito's seeded hash. Both ``D`` and :func:`new_uid` depend on the value
    alone, so every instance of a series gets one SeriesInstanceUID and every series of a
    study keeps one StudyInstanceUID, on any shard or worker, and no original UID is written.
    De-identifying first is the right order because the salt is recorded in the manifest:
    ``new_uid(original, salt)`` could be recomputed by anyone holding the manifest and a list
    of original UIDs, while ``new_uid(D(original), salt)`` also needs the secret seed; and
    everything ulmed derives then comes from the de-identified dataset only, which relates
    to the output exactly as an input does in a run without de-identification.

    Args:
        record: A record from :func:`read_series`, possibly with a perturbed image.
        root: The input folder the series was scanned from.
        out_root: The output folder.
        options: Method, budget, UID salt, output encoding and de-identification.

    Returns:
        ``(input file, output file)`` for every instance written.

    Raises:
        ConfigError: The record is not a DICOM record or its shape changed.
        InputError: A value cannot be de-identified.
        MissingDependencyError: The requested encoder, or dicognito, is not installed.
        OutputError: An output would overwrite its input or cannot be written.
    """
    handle = record.handle
    if record.kind != "dicom" or not isinstance(handle, DicomHandle):
        raise ConfigError(f"{record.key}: not a DICOM record; use the writer of its kind")
    image = record.image if record.spatial_dims == 3 else record.image[:, None]
    if image.shape[1] != sum(handle.frames) or image.shape[0] not in (1, 3):
        raise ConfigError(f"{record.key}: image shape {record.image.shape} does not fit the {sum(handle.frames)} frames")
    # one new SeriesInstanceUID per record; de-identified: from the first instance's new (D) UID
    new_series = None if options.deidentify is not None else new_uid(handle.series_uid, options.uid_salt)
    pairs: list[tuple[Path, Path]] = []
    start = 0
    try:
        for path, n in zip(handle.files, handle.frames):
            target = Path(out_root) / _rel(path, root)
            if target.resolve() == Path(path).resolve():
                raise OutputError("the output would overwrite this input; choose an output folder outside the input", path)
            s = handle.slopes[start : start + n][None, :, None, None]
            b = handle.intercepts[start : start + n][None, :, None, None]
            native = np.asarray(image[:, start : start + n], dtype=np.float64)
            start += n
            block = np.clip(np.rint((native - b) / s), *handle.stored_range).astype(handle.stored_dtype)
            new_series = _write_instance(Path(path), target, block, handle, options, new_series)
            pairs.append((Path(path), target))
    except InputError:  # a value that cannot be de-identified: leave no part of the series behind
        for _, written in pairs:
            written.unlink(missing_ok=True)
        raise
    return pairs


def _write_instance(path: Path, target: Path, block: np.ndarray, handle: DicomHandle, options: WriteOptions,
                    new_series: str | None) -> str:
    """Write one instance of a series with its stored values ``block``; return the series' new UID."""
    ds = _read(path, defer=True)
    if options.deidentify is not None:
        ds.pop(_PIXEL_DATA, None)  # ours is set below; the original is neither loaded nor de-identified
        deidentify_dataset(ds, options.deidentify, path)
    _set_pixels(ds, block, handle, options, path)
    ds.SOPInstanceUID = new_uid(str(ds.SOPInstanceUID), options.uid_salt)
    if new_series is None:
        new_series = new_uid(str(ds.SeriesInstanceUID), options.uid_salt)
    ds.SeriesInstanceUID = new_series
    _mark_derived(ds)
    ds.DerivationDescription = f"ulmed {options.method} {options.budget}"[:1024]
    meta = ds.file_meta
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID  # this file is written by pydicom
    if "ImplementationVersionName" in meta:
        del meta.ImplementationVersionName  # pydicom fills in its own
    try:
        with atomic_path(target) as tmp:
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)  # save_as refuses big->little endian
    except (ValueError, AttributeError, TypeError) as exc:
        reason = f"cannot write the protected copy ({_short(exc)}); rerun with --debug and report the file"
        raise OutputError(reason, target) from exc
    except OSError as exc:
        raise OutputError(f"cannot write the protected copy ({os_reason(exc)}); check the output folder", target) from exc
    return new_series

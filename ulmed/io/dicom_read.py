"""Read one DICOM image series into a channel-first :class:`~ulmed.io.record.Record`.

:func:`read_series` decodes every instance of a series from :func:`~ulmed.io.dicom_scan.scan_dicom`,
applies RescaleSlope and RescaleIntercept (per frame) and keeps in a :class:`DicomHandle` what the
writer (:mod:`ulmed.io.dicom_write`) needs to store the values back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from ulmed.errors import InputError, MissingDependencyError
from ulmed.io.dicom_dataset import (
    CODECS_HINT,
    PIXEL_DATA,
    floats,
    frame_value,
    read_dataset,
    short_reason,
    slice_normal,
    transfer_syntax,
    unsupported,
)
from ulmed.io.dicom_pixels import size_mismatch
from ulmed.io.dicom_series import DicomSeries
from ulmed.io.notices import library_messages
from ulmed.io.record import IntensityMapping, Record

__all__ = ["DicomHandle", "read_series"]

#: Attributes every instance of a series must share with the first one.
_LAYOUT = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")
#: The functional group that holds pixel spacing and slice gaps of enhanced (multi-frame) images.
_MEASURES = "PixelMeasuresSequence"


@dataclass(frozen=True)
class DicomHandle:
    """What :func:`~ulmed.io.dicom_write.write_series` needs.

    ``frames`` counts the frames of each file; ``slopes``/``intercepts`` hold the rescale of
    every frame of the series; ``stored_dtype`` and ``stored_range`` (from BitsAllocated,
    PixelRepresentation and BitsStored) say how native values are stored back. ``datasets``
    holds the datasets as they were read, without their pixel data, for the first write only:
    :func:`~ulmed.io.dicom_write.write_series` takes them (and changes them), so a file is
    parsed once per run; a later write of the record reads ``files`` again.
    """

    files: tuple[Path, ...]
    frames: tuple[int, ...]
    slopes: np.ndarray
    intercepts: np.ndarray
    stored_dtype: str
    stored_range: tuple[int, int]
    series_uid: str
    multi_frame: bool
    datasets: list[Dataset] = field(default_factory=list, compare=False, repr=False)


@dataclass(frozen=True)
class _Stack:
    """What the files of a series hold besides their stored values, in slice order."""

    first: Dataset
    color: bool
    frames: tuple[int, ...]
    slopes: np.ndarray  # one per frame of the series
    intercepts: np.ndarray
    positions: list[float]  # along the first file's slice normal, where known


def read_series(series: DicomSeries, root: Path) -> Record:
    """Read a series into a channel-first record of modality values.

    What pydicom and the codec plugins warn or log while reading goes to
    ``meta["warnings"]`` (:func:`ulmed.io.notices.library_messages`), not to the terminal.

    Args:
        series: A series from :func:`~ulmed.io.dicom_scan.scan_dicom`.
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
    stack, stored, datasets = _read_files(series)
    first = stack.first
    stored_dtype, stored_range = _stored_layout(first)
    native = _native_values(stored, stack.slopes, stack.intercepts, stored_dtype)
    del stored
    mapping = _mapping(native, first, stack.slopes, stack.intercepts, stored_range)
    spatial_dims = 3 if native.shape[1] > 1 else 2
    native = native if spatial_dims == 3 else native[:, 0]
    spacing = _spacing(first, stack.positions, len(series.files), spatial_dims)
    meta = {"modality": str(first.get("Modality", "") or ""), "shape": tuple(int(v) for v in native.shape),
            "spacing": spacing, "dtype": stored_dtype.name,
            "photometric": "RGB" if stack.color else str(first.PhotometricInterpretation),
            "transfer_syntax": str(transfer_syntax(first)), "n_files": len(series.files),
            "sop_class": str(first.get("SOPClassUID", ""))}
    handle = DicomHandle(
        files=tuple(Path(p) for p in series.files), frames=stack.frames, slopes=stack.slopes,
        intercepts=stack.intercepts, stored_dtype=stored_dtype.str, stored_range=stored_range,
        series_uid=series.series_uid, multi_frame="NumberOfFrames" in first,
        datasets=[_as_read(ds, raw) for ds, raw in datasets],  # last: nothing reads them after this
    )
    # slices with their own RescaleSlope store in steps of their own (quantisation keeps each one's grid)
    s_all = stack.slopes
    steps = np.abs(s_all)[None, :, None, None] if spatial_dims == 3 and np.unique(np.abs(s_all)).size > 1 else None
    return Record(key=series.key, image=native, mapping=mapping, spatial_dims=spatial_dims, kind="dicom",
                  handle=handle, meta=meta, quantum_map=steps)


def _read_files(series: DicomSeries) -> tuple[_Stack, list[np.ndarray], list[tuple[Dataset, list[RawDataElement]]]]:
    """Read and decode every file of ``series``: what they hold, each file's stored values
    ``(frames, rows, cols[, 3])`` and each dataset with the elements it held as raw bytes when it was
    read (:func:`_as_read`).

    Raises:
        InputError: A file is unsupported, or differs from the first in size or bits.
    """
    stored, frames, slopes, intercepts, positions, datasets = [], [], [], [], [], []
    first: Dataset | None = None
    for path in series.files:
        ds = read_dataset(path)
        raw = [e for e in (ds.get_item(tag) for tag in ds.keys()) if isinstance(e, RawDataElement)]
        if reason := unsupported(ds):
            raise InputError(reason, path)
        if first is None:
            first = ds
        if any(int(ds.get(k) or 0) != int(first.get(k) or 0) for k in _LAYOUT):
            reason = f"differs from the first file of series {series.key} in size or bits; rescan the folder"
            raise InputError(reason, path)
        arr = _decode(ds, path)
        s, b = _rescale(ds, arr.shape[0], path)
        datasets.append((ds, raw))
        stored.append(arr)
        frames.append(arr.shape[0])
        slopes.append(s)
        intercepts.append(b)
        normal, ipp = slice_normal(floats(first, "ImageOrientationPatient")), floats(ds, "ImagePositionPatient")
        if normal is not None and ipp is not None and len(ipp) == 3:
            positions.append(float(np.dot(ipp, normal)))
    assert first is not None
    stack = _Stack(first, stored[0].ndim == 4, tuple(frames), np.concatenate(slopes), np.concatenate(intercepts),
                   positions)
    return stack, stored, datasets


def _as_read(ds: Dataset, raw: list[RawDataElement]) -> Dataset:
    """``ds`` for the writer: without its pixel data, every element it read as raw bytes raw again.

    Reading a value makes pydicom convert its element (an element stored with VR UN takes the
    dictionary's VR); the writer gets the elements as they were in the file instead, as when it
    read the file itself, so the bytes it writes do not depend on what the reader looked at.
    """
    for elem in raw:
        if elem.tag != PIXEL_DATA and ds.get_item(elem.tag) is not elem:  # converted since
            ds[elem.tag] = elem
    del ds[PIXEL_DATA]  # decoded (this also drops pydicom's cached array); the writer sets its own
    return ds


def _stored_layout(first: Dataset) -> tuple[np.dtype, tuple[int, int]]:
    """The stored dtype (BitsAllocated, PixelRepresentation) and value range (BitsStored)."""
    bits, signed, alloc = int(first.BitsStored), int(first.PixelRepresentation) == 1, int(first.BitsAllocated)
    smin, smax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return np.dtype(f"{'i' if signed else 'u'}{alloc // 8}"), (smin, smax)


def _native_values(stored: list[np.ndarray], slopes: np.ndarray, intercepts: np.ndarray,
                   stored_dtype: np.dtype) -> np.ndarray:
    """``stored x slope + intercept`` per frame as one ``(C, N, rows, cols)`` array: integers when every
    rescale is integral, else float64.

    Each file's values are cast into their frames of the result and rescaled there, so the series
    is held once at the result's dtype (no stacked copy of the stored values beside it).
    """
    integral = np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts))
    dtype = (np.int64 if stored_dtype.itemsize == 4 else np.int32) if integral else np.float64
    color = stored[0].ndim == 4
    rows_cols = stored[0].shape[1:3]
    native = np.empty((3 if color else 1, len(slopes), *rows_cols), dtype=dtype)
    start = 0
    for arr in stored:
        n = arr.shape[0]
        into = native[:, start : start + n]
        into[...] = np.moveaxis(arr, -1, 0) if color else arr[None]  # cast while copying
        s, b = slopes[start : start + n].astype(dtype), intercepts[start : start + n].astype(dtype)
        if np.any(s != 1):
            into *= s[None, :, None, None]
        if np.any(b != 0):
            into += b[None, :, None, None]
        start += n
    return native


def _mapping(native: np.ndarray, first: Dataset, slopes: np.ndarray, intercepts: np.ndarray,
             stored_range: tuple[int, int]) -> IntensityMapping:
    """The mapping of the series' values: HU for CT (unless RescaleType says otherwise), robust budget range."""
    smin, smax = stored_range
    ends = np.concatenate([smin * slopes + intercepts, smax * slopes + intercepts])  # per frame, either slope sign
    modality = str(first.get("Modality", "") or "")
    rescale_type = first.get("RescaleType") or frame_value(first, 0, "PixelValueTransformationSequence", "RescaleType")
    unit = "HU" if modality == "CT" and str(rescale_type or "HU").strip().upper() == "HU" else "value"
    return IntensityMapping.for_data(native, float(ends.min()), float(ends.max()), float(np.abs(slopes).max()), unit,
                                     robust=True)


def _spacing(first: Dataset, positions: list[float], n_files: int, spatial_dims: int) -> tuple[float | None, ...]:
    """Pixel spacing (rows, columns), after the slice gap for a volume; None where unknown."""
    pixel = floats(first, "PixelSpacing") or frame_value(first, 0, _MEASURES, "PixelSpacing")
    spacing: list[float | None] = [float(v) for v in pixel] if pixel else [None, None]
    if spatial_dims == 3:
        if len(positions) > 1 and len(positions) == n_files:
            gap: Any = float(np.median(np.abs(np.diff(positions))))
        else:
            gap = first.get("SpacingBetweenSlices") or frame_value(first, 0, _MEASURES, "SpacingBetweenSlices")
            gap = gap or first.get("SliceThickness") or frame_value(first, 0, _MEASURES, "SliceThickness")
        spacing.insert(0, float(gap) if gap not in (None, "") else None)
    return tuple(spacing)


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    """Stored values as (frames, rows, cols[, 3]); pydicom converts YBR to RGB."""
    ts = transfer_syntax(ds)
    name = ts.name
    if reason := size_mismatch(ds, ts):
        raise InputError(reason, path)
    try:
        arr = ds.pixel_array
    except RuntimeError as exc:
        if "missing dependencies" in str(exc):  # pydicom's message when no plugin is installed
            reason = f"cannot decode '{name}' pixel data, a codec is missing; {CODECS_HINT}"
            raise MissingDependencyError(reason, path) from exc
        reason = f"cannot decode the pixel data ({short_reason(exc)}); re-export the file uncompressed"
        raise InputError(reason, path) from exc
    except NotImplementedError as exc:
        reason = f"transfer syntax '{name}' cannot be decoded; re-export the series uncompressed"
        raise InputError(reason, path) from exc
    except Exception as exc:  # noqa: BLE001
        reason = f"cannot decode the pixel data ({short_reason(exc)}); the file may be truncated, re-export it"
        raise InputError(reason, path) from exc
    except BaseException as exc:  # a codec's Rust panic (pyo3 PanicException) is no Exception
        if type(exc).__name__ != "PanicException":
            raise
        reason = f"the decoder failed on the pixel data ({short_reason(exc)}); re-export the file uncompressed"
        raise InputError(reason, path) from exc
    return arr[None] if arr.ndim == (3 if int(ds.get("SamplesPerPixel") or 1) == 3 else 2) else arr


def _rescale(ds: Dataset, frames: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame slope and intercept (1 and 0 if absent, or with a non-linear Modality LUT)."""
    slopes, intercepts = np.ones(frames), np.zeros(frames)
    if "ModalityLUTSequence" in ds:  # protect the stored values themselves
        return slopes, intercepts
    for i in range(frames):
        s, b = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        s = frame_value(ds, i, "PixelValueTransformationSequence", "RescaleSlope") if s in (None, "") else s
        b = frame_value(ds, i, "PixelValueTransformationSequence", "RescaleIntercept") if b in (None, "") else b
        slopes[i], intercepts[i] = (1.0 if s in (None, "") else float(s)), (0.0 if b in (None, "") else float(b))
    if not (np.all(np.isfinite(slopes)) and np.all(slopes != 0) and np.all(np.isfinite(intercepts))):
        raise InputError("RescaleSlope is 0 or not a number; fix the export", path)
    return slopes, intercepts

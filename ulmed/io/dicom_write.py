"""Write a (protected) DICOM record back: every instance of its series, as a derived series.

:func:`write_series` keeps every attribute except the pixel data, the SOP Instance and Series
Instance UIDs (new, deterministic: :func:`new_uid`), ImageType/FrameType (DERIVED),
DerivationDescription and the transfer syntax (Explicit VR Little Endian, or a lossless one on
request: :class:`~ulmed.io.base.DicomEncoding`).

With ``WriteOptions.deidentify`` every dataset is de-identified right after it is read (its
original pixel data dropped first, so the de-identifier never sees or loads it; ours is set
afterwards), and the new UIDs are derived from the de-identified ones:
SOP = ``new_uid(D(sop), salt)``, Series = ``new_uid(D(series), salt)``, Study = ``D(study)``,
where ``D`` is dicognito's seeded hash (:mod:`ulmed.io.deidentify`). Both ``D`` and
:func:`new_uid` depend on the value alone, so every instance of a series gets one
SeriesInstanceUID and every series of a study keeps one StudyInstanceUID, on any shard or
worker, and no original UID is written. De-identifying first is the right order because the
salt is recorded in the manifest: ``new_uid(original, salt)`` could be recomputed by anyone
holding the manifest and a list of original UIDs, while ``new_uid(D(original), salt)`` also
needs the secret seed; and everything ulmed derives then comes from the de-identified dataset
only, which relates to the output exactly as an input does in a run without de-identification.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from ulmed.errors import ConfigError, MissingDependencyError, OutputError
from ulmed.io.atomic import AtomicBatch, atomic_batch
from ulmed.io.base import DicomEncoding, WriteOptions
from ulmed.io.deidentify import deidentify_dataset
from ulmed.io.dicom_dataset import (
    CODECS_HINT,
    PIXEL_DATA,
    read_dataset,
    relative_to,
    short_reason,
    transfer_syntax,
    write_dataset,
)
from ulmed.io.dicom_pixels import describe_values
from ulmed.io.dicom_read import DicomHandle
from ulmed.io.record import Record

__all__ = ["new_uid", "write_series"]

#: The transfer syntax of each compressed output encoding (the others are written uncompressed).
_COMPRESSED = {
    DicomEncoding.RLE: RLELossless,
    DicomEncoding.JPEGLS: JPEGLSLossless,
    DicomEncoding.J2K: JPEG2000Lossless,
}
#: Byte sizes of the VRs whose values pydicom keeps as raw bytes in a big-endian dataset.
_WORD_SIZES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


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


def write_series(record: Record, root: Path, out_root: Path, options: WriteOptions,
                 digests: dict[Path, str] | None = None) -> list[tuple[Path, Path]]:
    """Write every instance of a record's series to the same relative path under ``out_root``.

    Native values become stored values ``round((native - intercept) / slope)`` clipped to the
    BitsStored range and cast to the stored dtype. New SOP Instance UIDs and one new Series
    Instance UID come from :func:`new_uid` with ``options.uid_salt`` (of the de-identified UIDs
    with ``options.deidentify``: see the module docstring). Inputs are never modified. The
    instances are written as one :class:`~ulmed.io.atomic.AtomicBatch`: each is on disk before
    any gets its final name, and when one cannot be encoded, written or de-identified, no file of
    the series is left behind.

    Args:
        record: A record from :func:`~ulmed.io.dicom_read.read_series`, possibly with a perturbed image.
        root: The input folder the series was scanned from.
        out_root: The output folder.
        options: Method, budget, UID salt, output encoding and de-identification.
        digests: Filled with the sha256 (hex) of every file written, by output path.

    Returns:
        ``(input file, output file)`` for every instance written.

    Raises:
        ConfigError: The record is not a DICOM record or its shape changed.
        InputError: A value cannot be de-identified.
        MissingDependencyError: The requested encoder, or dicognito, is not installed.
        OutputError: An output would overwrite its input or cannot be written.
    """
    handle, image = _series_image(record)
    # one new SeriesInstanceUID per record; de-identified: from the first instance's new (D) UID
    new_series = None if options.deidentify is not None else new_uid(handle.series_uid, options.uid_salt)
    pairs: list[tuple[Path, Path]] = []
    start = 0
    read = handle.datasets[:] if len(handle.datasets) == len(handle.files) else [None] * len(handle.files)
    handle.datasets.clear()  # taken: they are changed below, a later write reads the files again
    with atomic_batch() as batch:  # an exception (a value that cannot be de-identified) leaves no file behind
        for i, (path, n) in enumerate(zip(handle.files, handle.frames)):
            target = _output_path(Path(path), root, out_root)
            block = _stored_values(image[:, start : start + n], handle, start)
            start += n
            ds, read[i] = read[i] or read_dataset(Path(path), defer=True), None  # the reader's, once
            new_series = _write_instance(ds, Path(path), target, block, handle, options, new_series, batch)
            pairs.append((Path(path), target))
    if digests is not None:
        digests.update(batch.digests)
    return pairs


def _series_image(record: Record) -> tuple[DicomHandle, np.ndarray]:
    """The record's handle and its image as ``(C, frames, rows, cols)``, checked against the series.

    Raises:
        ConfigError: The record is not a DICOM record or its shape changed.
    """
    handle = record.handle
    if record.kind != "dicom" or not isinstance(handle, DicomHandle):
        raise ConfigError(f"{record.key}: not a DICOM record; use the writer of its kind")
    image = record.image if record.spatial_dims == 3 else record.image[:, None]
    if image.shape[1] != sum(handle.frames) or image.shape[0] not in (1, 3):
        frames = sum(handle.frames)
        raise ConfigError(f"{record.key}: image shape {record.image.shape} does not fit the {frames} frames")
    return handle, image


def _output_path(path: Path, root: Path, out_root: Path) -> Path:
    """Where the copy of ``path`` goes: its path relative to ``root``, under ``out_root``.

    Raises:
        OutputError: That is ``path`` itself.
    """
    target = Path(out_root) / relative_to(path, root)
    if os.path.lexists(target) and target.resolve() == Path(path).resolve():  # no file there: not the input
        raise OutputError("the output would overwrite this input; choose an output folder outside the input", path)
    return target


def _stored_values(native: np.ndarray, handle: DicomHandle, start: int) -> np.ndarray:
    """Native values of the frames from ``start`` on as stored values: rescaled back, rounded, clipped."""
    n = native.shape[1]
    s = handle.slopes[start : start + n][None, :, None, None]
    b = handle.intercepts[start : start + n][None, :, None, None]
    if native.dtype.kind in "iu" and np.all(s == 1) and np.all(b == np.round(b)):
        # integers unchanged by the method ("none"): ``native - b`` is exact, as the rounding below would give
        return _integer_stored(native, b, handle)
    values = np.subtract(native, b, dtype=np.float64)  # a new array: the steps below work in place
    if np.any(s != 1):  # dividing by 1 changes no float, so it is left out
        values /= s
    np.rint(values, out=values)
    np.clip(values, *handle.stored_range, out=values)
    return values.astype(handle.stored_dtype)


def _integer_stored(native: np.ndarray, intercepts: np.ndarray, handle: DicomHandle) -> np.ndarray:
    """``clip(native - intercept, stored range)`` of integer ``native`` with whole intercepts, as stored values.

    Clipping ``native`` to the stored range shifted by the intercept first, then subtracting it,
    gives the same integers; when ``native`` is signed, one intercept covers the frames and the
    shifted range fits ``native``'s dtype, no step can overflow it, so it runs in that dtype (not int64).
    """
    lo, hi = handle.stored_range
    shift = np.unique(intercepts)
    b = int(shift[0]) if shift.size == 1 else None
    limits = np.iinfo(native.dtype)
    if native.dtype.kind == "i" and b is not None and limits.min <= lo + b and hi + b <= limits.max:
        values = np.clip(native, lo + b, hi + b)
        if b:
            values -= native.dtype.type(b)
        return values.astype(handle.stored_dtype, copy=False)
    return np.clip(native - intercepts.astype(np.int64), lo, hi).astype(handle.stored_dtype)


def _write_instance(ds: Dataset, path: Path, target: Path, block: np.ndarray, handle: DicomHandle,
                    options: WriteOptions, new_series: str | None, batch: AtomicBatch) -> str:
    """Write one instance ``ds`` (read from ``path``) with its stored values ``block``; return the series' new UID."""
    if options.deidentify is not None:
        ds.pop(PIXEL_DATA, None)  # ours is set below; the original is neither loaded nor de-identified
        deidentify_dataset(ds, options.deidentify, path)
    _set_pixels(ds, block, handle, options, path)
    ds.SOPInstanceUID = new_uid(str(ds.SOPInstanceUID), options.uid_salt)
    if new_series is None:
        new_series = new_uid(str(ds.SeriesInstanceUID), options.uid_salt)
    ds.SeriesInstanceUID = new_series
    _mark_derived(ds)
    ds.DerivationDescription = f"ulmed {options.method} {options.budget}"[:1024]
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    write_dataset(ds, target, "protected copy", "rerun with --debug and report the file", quote=True, batch=batch)
    return new_series


def _set_pixels(ds: Dataset, block: np.ndarray, handle: DicomHandle, options: WriteOptions, path: Path) -> None:
    """Put stored values ``block`` (C, frames, rows, cols) into ``ds`` in the requested transfer syntax."""
    big_endian = not transfer_syntax(ds).is_little_endian
    _put_pixel_data(ds, block, handle)
    if big_endian:
        _swap_raw_words(ds)
    if block.shape[0] == 3:
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if options.dicom_encoding in _COMPRESSED:
        _compress(ds, _COMPRESSED[options.dicom_encoding], block.shape[0] == 3, path)


def _put_pixel_data(ds: Dataset, block: np.ndarray, handle: DicomHandle) -> None:
    """Native little-endian Pixel Data from ``block``, and the value-range attributes that describe it."""
    arr = np.moveaxis(block, 0, -1) if block.shape[0] == 3 else block[0]
    little = np.dtype(handle.stored_dtype).newbyteorder("<")
    data = np.ascontiguousarray(arr if handle.multi_frame else arr[0]).astype(little, copy=False)
    for kw in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):  # encapsulation only
        if kw in ds:
            del ds[kw]
    raw = data.tobytes()
    if len(raw) % 2:  # padded to an even length; an even one is not copied again
        raw += b"\0"
    ds.add_new(PIXEL_DATA, "OB" if int(ds.BitsAllocated) <= 8 else "OW", raw)
    describe_values(ds, int(block.min()), int(block.max()), signed=np.dtype(handle.stored_dtype).kind == "i")


def _swap_raw_words(ds: Dataset) -> None:
    """Swap the raw bytes of the OW/OL/OF/OD/OV values of a big-endian dataset to little endian.

    pydicom keeps those values as raw bytes (the typed elements the writer needs may lack a VR
    otherwise) and does not swap them when the dataset is written little endian.
    """
    for elem in ds.iterall():
        if elem.VR in _WORD_SIZES and isinstance(elem.value, bytes) and elem.tag != PIXEL_DATA:
            size = _WORD_SIZES[elem.VR]
            elem.value = np.frombuffer(elem.value, dtype=f">u{size}").astype(f"<u{size}").tobytes()


def _compress(ds: Dataset, uid: UID, color: bool, path: Path) -> None:
    """Encode the pixel data of ``ds`` losslessly in transfer syntax ``uid``.

    Raises:
        MissingDependencyError: The encoder is not installed.
        OutputError: The encoder fails.
    """
    if color and uid == JPEG2000Lossless:
        ds.PhotometricInterpretation = "YBR_RCT"  # colour J2K lossless uses the reversible transform
    try:
        ds.compress(uid, generate_instance_uid=False)
    except RuntimeError as exc:
        if "missing dependencies" in str(exc):
            reason = f"cannot encode '{uid.name}', an encoder is missing; {CODECS_HINT}"
            raise MissingDependencyError(reason, path) from exc
        reason = f"cannot encode '{uid.name}' ({short_reason(exc)}); use --dicom-encoding explicit"
        raise OutputError(reason, path) from exc


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

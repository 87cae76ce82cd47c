"""One DICOM file as a pydicom dataset: recognise it, read it, ask its header, write it back.

The scanner (:mod:`ulmed.io.dicom_scan`), the reader (:mod:`ulmed.io.dicom_read`), the writer
(:mod:`ulmed.io.dicom_write`) and the de-identified copy (:mod:`ulmed.io.deidentify`) share
these helpers, so a file is read, described and written the same way everywhere.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from ulmed.errors import InputError, OutputError, os_reason
from ulmed.io.atomic import AtomicBatch, atomic_path
from ulmed.io.notices import library_messages

__all__ = ["CODECS_HINT", "DEFER", "PIXEL_DATA", "frame_value", "floats", "is_dicom_file", "read_dataset",
           "relative_to", "short_reason", "slice_normal", "transfer_syntax", "unsupported", "write_dataset"]

CODECS_HINT = 'install the DICOM codecs with: pip install "ulmed[codecs]"'
#: The Pixel Data tag.
PIXEL_DATA = 0x7FE00010
#: Larger values are left unread while scanning headers (pydicom's ``defer_size``).
DEFER = "256 KB"


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


def short_reason(exc: BaseException) -> str:
    """The text of ``exc`` on one line, at most 160 characters (its type name when it has none)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def relative_to(path: Path, root: Path) -> Path:
    """``path`` relative to the input folder ``root`` (also through links).

    Raises:
        InputError: ``path`` is not under ``root``.
    """
    try:
        return Path(path).relative_to(root)
    except ValueError:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve())
        except ValueError as exc:
            raise InputError(f"is not inside the input folder {root}; pass files from under it", path) from exc


def read_dataset(path: Path, defer: bool = False) -> Dataset:
    """The whole dataset of ``path`` (values over :data:`DEFER` left on disk with ``defer``).

    Raises:
        InputError: pydicom cannot read the file.
    """
    try:
        with library_messages():  # kept by an enclosing block (read_series, a unit of a run), else dropped
            return pydicom.dcmread(path, force=True, defer_size=DEFER if defer else None)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"unreadable DICOM ({short_reason(exc)}); re-export the file or remove it", path) from exc


def transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax of ``ds`` (Explicit VR Little Endian when its file meta names none)."""
    return UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ExplicitVRLittleEndian))


def floats(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    """A multi-valued number attribute as floats, or None when absent, empty or not numbers."""
    try:
        value = ds.get(keyword)
        return tuple(float(v) for v in value) if value is not None and len(value) else None
    except (TypeError, ValueError):
        return None


def slice_normal(iop: Sequence[float] | None) -> np.ndarray | None:
    """The unit normal of the slice plane of an ImageOrientationPatient, or None."""
    if iop is None or len(iop) != 6:
        return None
    n = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    return n / np.linalg.norm(n) if np.linalg.norm(n) > 1e-6 else None


def frame_value(ds: Dataset, frame: int, seq: str, attr: str) -> Any:
    """``attr`` from the per-frame functional group of ``frame``, else from the shared one."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and len(items) > idx and items[idx].get(seq):
            value = items[idx].get(seq)[0].get(attr)
            if value not in (None, ""):
                return value
    return None


def unsupported(ds: Dataset) -> str | None:
    """Why this image cannot be protected, or None."""
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        return "palette-colour images are not supported; convert the series to RGB or leave it out"
    if int(ds.get("SamplesPerPixel") or 1) not in (1, 3):
        return f"{ds.SamplesPerPixel} samples per pixel are not supported; convert to grey or RGB"
    if int(ds.get("BitsAllocated") or 0) not in (8, 16, 32):
        return f"BitsAllocated={ds.get('BitsAllocated')} is not supported (8, 16 or 32 are); leave the file out"
    return None


def write_dataset(ds: Dataset, target: Path, copy: str, fix: str, quote: bool,
                  batch: AtomicBatch | None = None) -> None:
    """Finish the file meta of ``ds`` and write it atomically to ``target`` in the DICOM file format.

    The file meta names the dataset's SOPInstanceUID (when it has one) and pydicom as the
    implementation that wrote the file (``ImplementationVersionName`` is pydicom's own).

    Args:
        ds: The dataset, with its file meta and transfer syntax set.
        target: The output file (its folder is created).
        copy: What the file is, for messages: ``"protected copy"``, ``"de-identified copy"``.
        fix: What to do when pydicom refuses the dataset, for the message.
        quote: Whether the message may quote pydicom's error (else its type only, and the
            error is not chained: its text may hold a value of the dataset).
        batch: Add the file to this batch (encoded now, written and renamed with the batch's
            other files: :class:`~ulmed.io.atomic.AtomicBatch`) instead of writing it here.

    Raises:
        OutputError: pydicom refuses the dataset, or the file cannot be written.
    """
    meta = ds.file_meta
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID  # this file is written by pydicom
    if "ImplementationVersionName" in meta:
        del meta.ImplementationVersionName  # pydicom fills in its own
    try:
        if batch is None:
            with atomic_path(target) as tmp:
                pydicom.dcmwrite(tmp, ds, enforce_file_format=True)  # save_as refuses big->little endian
        else:
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
            batch.write_bytes(target, buffer.getbuffer())
    except (ValueError, AttributeError, TypeError) as exc:
        said = short_reason(exc) if quote else type(exc).__name__
        raise OutputError(f"cannot write the {copy} ({said}); {fix}", target) from (exc if quote else None)
    except OSError as exc:
        raise OutputError(f"cannot write the {copy} ({os_reason(exc)}); check the output folder", target) from exc

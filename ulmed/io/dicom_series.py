"""What the DICOM scanner hands the pipeline: the series found and the files left out.

Plain data, without pydicom: the discovery and the pipeline hold these for every run, and a
run over images never imports pydicom (about 0.1 s of its start-up, with the ``requests`` chain
that pydicom's pixel module loads; a NIfTI run loads it through nibabel). :mod:`ulmed.io.dicom_scan`
fills them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DicomScan", "DicomSeries"]


@dataclass
class DicomSeries:
    """One image series: the files that :func:`~ulmed.io.dicom_read.read_series` turns into one record.

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

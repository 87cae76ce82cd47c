"""Tests of :mod:`ulmed.io.dicom_series`: the scanner's results as plain data, importable without pydicom."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ulmed.io.dicom_scan import scan_dicom
from ulmed.io.dicom_series import DicomScan, DicomSeries


def test_the_types_load_without_pydicom() -> None:
    code = "import sys\nimport ulmed.io.dicom_series\nprint('pydicom' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_scanner_returns_these_types(tmp_path: Path, sample_data: Path) -> None:
    root = tmp_path / "in"
    shutil.copytree(sample_data / "dicom" / "ct_series", root)
    scan = scan_dicom(root, sorted(root.iterdir()))
    assert isinstance(scan, DicomScan) and scan.skipped == [] and scan.bad == []
    (series,) = scan.series
    assert isinstance(series, DicomSeries) and len(series.files) == len(list(root.iterdir()))
    assert series.note is None and series.series_uid not in series.key  # the key names no UID

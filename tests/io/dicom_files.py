"""Helpers of the DICOM tests: pydicom's own test files, copies of them, and a whole protect pass."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import JPEGLSLossless

from ulmed.io.base import WriteOptions
from ulmed.io.dicom_read import read_series
from ulmed.io.dicom_scan import scan_dicom
from ulmed.io.dicom_write import write_series

OPTIONS = WriteOptions(method="none", budget="0", uid_salt="test-salt")


def data(name: str) -> Path:
    """A test file from pydicom or pydicom-data, without touching the network."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed; pip install pydicom-data")
    return Path(path)


def digest(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def copy_in(names: list[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(data(n), folder / n)) for n in names]


def protect_all(root: Path, out: Path, options: WriteOptions = OPTIONS) -> list[tuple[Path, Path]]:
    """Scan ``root``, read every series and write it unchanged under ``out``."""
    scan = scan_dicom(root, sorted(p for p in root.rglob("*") if p.is_file()))
    pairs = []
    for series in scan.series:
        pairs += write_series(read_series(series, root), root, out, options)
    return pairs


def rewritten(name: str, dst: Path, **values: object) -> Path:
    """A copy of test file ``name`` at ``dst`` with the given header values changed."""
    ds = pydicom.dcmread(data(name))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


def hide_jpegls_codecs(monkeypatch: pytest.MonkeyPatch) -> None:
    """What pydicom sees when neither pyjpegls nor pylibjpeg-libjpeg is installed."""
    for codec in (get_decoder(JPEGLSLossless), get_encoder(JPEGLSLossless)):
        monkeypatch.setattr(codec, "_available", {})
        monkeypatch.setattr(codec, "_unavailable", {"pyjpegls": ("numpy", "pyjpegls")})

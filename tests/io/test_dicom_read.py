"""Tests of :mod:`ulmed.io.dicom_read`: a series read into a record of modality values."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.io.dicom_files import copy_in, hide_jpegls_codecs, rewritten
from ulmed.errors import InputError, MissingDependencyError
from ulmed.io.dicom_read import DicomHandle, read_series
from ulmed.io.dicom_scan import scan_dicom
from ulmed.io.dicom_series import DicomSeries


def test_record_meta_and_key_hold_no_identity(tmp_path: Path) -> None:
    (src,) = copy_in(["CT_small.dcm"], tmp_path / "in")
    series = scan_dicom(tmp_path / "in", [src]).series[0]
    record = read_series(series, tmp_path / "in")
    ds = pydicom.dcmread(src)
    unsalted = hashlib.sha256(ds.SeriesInstanceUID.encode()).hexdigest()[:12]
    assert re.fullmatch(r"\./[0-9a-f]{12}", series.key) and series.key != "./" + unsalted  # keyed by a salt
    salted = scan_dicom(tmp_path / "in", [src], key_salt="a-run-salt-0123456789").series[0].key
    assert salted == scan_dicom(tmp_path / "in", [src], key_salt="a-run-salt-0123456789").series[0].key != series.key
    text = repr((series.key, record.meta))
    assert str(ds.PatientName) not in text and str(ds.PatientID) not in text and str(ds.StudyDate) not in text
    assert record.meta["modality"] == "CT" and record.meta["dtype"] == "int16" and record.meta["n_files"] == 1
    assert record.mapping.unit == "HU" and record.mapping.quantum == 1.0
    assert record.mapping.valid_min == -32768 - 1024 and record.mapping.valid_max == 32767 - 1024
    assert np.array_equal(record.image[0], ds.pixel_array.astype(np.int32) - 1024)


def test_missing_decoder_raises_missing_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "in"
    (compressed,) = copy_in(["MR_small_jpeg_ls_lossless.dcm"], root)
    hide_jpegls_codecs(monkeypatch)
    (series,) = scan_dicom(root, [compressed]).series  # headers need no codec
    with pytest.raises(MissingDependencyError, match=r"ulmed\[codecs\]") as err:
        read_series(series, root)
    assert str(compressed) in str(err.value)


SIZE_MISMATCH = re.compile(r"pixel data holds \d+ values( \(.*\))?, Rows x Columns x frames x samples says \d+ .*; "
                           r"the file is damaged or its header is wrong")


@pytest.mark.parametrize(("name", "values"), [
    ("CT_small.dcm", {"Rows": 100}),  # native, more data than the header says: was silently cropped
    ("CT_small.dcm", {"Columns": 200}),  # native, less data than the header says
    ("emri_small.dcm", {"Rows": 60}),  # native multi-frame
    ("MR_small_RLE.dcm", {"Rows": 60}),  # RLE: the Rust decoder panicked past `except Exception`
    ("MR_small_jpeg_ls_lossless.dcm", {"Columns": 60}),
    ("MR_small_jp2klossless.dcm", {"Rows": 70}),
    ("US1_J2KR.dcm", {"Rows": 400}),  # colour J2K
])
def test_rows_columns_that_disagree_with_the_pixel_data_fail_as_that_file(
    tmp_path: Path, name: str, values: dict
) -> None:
    root = tmp_path / "in"
    bad = rewritten(name, root / "bad.dcm", **values)
    (series,) = scan_dicom(root, [bad]).series  # the header alone looks fine
    with pytest.raises(InputError) as err:
        read_series(series, root)
    assert err.value.path == str(bad) and SIZE_MISMATCH.search(err.value.reason), err.value.reason
    assert "\n" not in str(err.value)


def test_a_stack_of_slices_reads_as_a_volume_with_its_handle(tmp_path: Path, sample_data: Path) -> None:
    root = sample_data / "dicom" / "ct_series"
    (series,) = scan_dicom(root, sorted(root.iterdir())).series
    record = read_series(series, root)
    ins = [pydicom.dcmread(p) for p in series.files]
    assert record.spatial_dims == 3 and record.image.shape == (1, 4, *ins[0].pixel_array.shape)
    z = [float(d.ImagePositionPatient[2]) for d in ins]
    assert record.meta["spacing"] == (float(np.median(np.abs(np.diff(z)))), *map(float, ins[0].PixelSpacing))
    slope, intercept = float(ins[0].RescaleSlope), float(ins[0].RescaleIntercept)
    for k, d in enumerate(ins):
        np.testing.assert_array_equal(record.image[0, k], d.pixel_array * slope + intercept)
    handle = record.handle
    assert isinstance(handle, DicomHandle) and handle.files == tuple(series.files) and handle.frames == (1, 1, 1, 1)
    assert not handle.multi_frame and handle.series_uid == series.series_uid and record.quantum_map is None
    bits = int(ins[0].BitsStored)
    expected = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ins[0].PixelRepresentation else (0, 2**bits - 1)
    assert handle.stored_range == expected and np.dtype(handle.stored_dtype) == ins[0].pixel_array.dtype


def test_a_multi_frame_instance_reads_frame_by_frame(tmp_path: Path) -> None:
    (src,) = copy_in(["emri_small.dcm"], tmp_path)
    record = read_series(scan_dicom(tmp_path, [src]).series[0], tmp_path)
    assert record.image.shape == (1, 10, 64, 64) and record.handle.multi_frame and record.handle.frames == (10,)
    assert record.mapping.unit == "value" and record.meta["modality"] == "MR"
    np.testing.assert_array_equal(record.image[0], pydicom.dcmread(src).pixel_array)


@pytest.mark.parametrize(("values", "match"), [
    ({"RescaleSlope": "0"}, "RescaleSlope is 0 or not a number; fix the export"),
    ({"PhotometricInterpretation": "PALETTE COLOR"}, "palette-colour images are not supported"),
])
def test_values_that_cannot_be_protected_fail_as_that_file(tmp_path: Path, values: dict, match: str) -> None:
    bad = rewritten("CT_small.dcm", tmp_path / "bad.dcm", **values)
    with pytest.raises(InputError, match=match) as err:
        read_series(DicomSeries(series_uid="1.2.3", files=[bad], key="./x"), tmp_path)
    assert err.value.path == str(bad)


def test_files_that_do_not_fit_one_series_are_refused(tmp_path: Path) -> None:
    ct, mr = copy_in(["CT_small.dcm", "MR_small.dcm"], tmp_path)
    with pytest.raises(InputError, match=r"differs from the first file of series \./x in size or bits") as err:
        read_series(DicomSeries(series_uid="1.2.3", files=[ct, mr], key="./x"), tmp_path)
    assert err.value.path == str(mr)
    with pytest.raises(InputError, match="has no files; rescan the folder"):
        read_series(DicomSeries(series_uid="1.2.3", files=[], key="./x"), tmp_path)

"""Tests of :mod:`ulmed.io.dicom_pixels`: headers checked against their pixel data, value ranges kept true."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.io.dicom_files import data
from ulmed.io.dicom_dataset import transfer_syntax
from ulmed.io.dicom_pixels import describe_values, size_mismatch


@pytest.mark.parametrize("name", ["CT_small.dcm", "emri_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm", "US1_J2KR.dcm", "SC_rgb_rle.dcm"])
def test_files_that_fit_their_header_pass(name: str) -> None:
    ds = pydicom.dcmread(data(name))
    assert size_mismatch(ds, transfer_syntax(ds)) is None


@pytest.mark.parametrize(("name", "values", "held", "says"), [
    ("CT_small.dcm", {"Rows": 100}, "16384 values", "12800 (100 x 128 x 1 x 1)"),
    ("emri_small.dcm", {"Rows": 60}, "40960 values", "38400 (60 x 64 x 10 x 1)"),
    ("MR_small_RLE.dcm", {"Rows": 60}, "(its first frame decodes to 4097 pixels)", "3840 (60 x 64 x 1 x 1)"),
    ("MR_small_jp2klossless.dcm", {"Rows": 70}, "4096 values (its first frame is 64 x 64 x 1)",
     "4480 (70 x 64 x 1 x 1)"),
    ("MR_small_jpeg_ls_lossless.dcm", {"Columns": 60}, "(its first frame is 64 x 64 x 1)", "3840 (64 x 60 x 1 x 1)"),
])
def test_a_header_that_disagrees_is_named_with_both_sizes(name: str, values: dict, held: str, says: str) -> None:
    ds = pydicom.dcmread(data(name))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    reason = size_mismatch(ds, transfer_syntax(ds))
    assert reason is not None and held in reason and f"Rows x Columns x frames x samples says {says}" in reason
    assert reason.endswith("the file is damaged or its header is wrong")


def test_a_header_without_the_size_cannot_tell() -> None:
    ds = pydicom.dcmread(data("CT_small.dcm"))
    del ds.Rows
    assert size_mismatch(ds, transfer_syntax(ds)) is None


def _ranged(signed: bool) -> Dataset:
    ds = Dataset()
    vr = "SS" if signed else "US"
    for keyword, value in [("SmallestImagePixelValue", 0), ("LargestImagePixelValue", 4000),
                           ("SmallestPixelValueInSeries", 0), ("LargestPixelValueInSeries", 4000),
                           ("SmallestImagePixelValueInPlane", 0), ("LargestImagePixelValueInPlane", 4000)]:
        ds.add_new(keyword, vr, value)
    return ds


@pytest.mark.parametrize("signed", [True, False])
def test_describe_values_states_the_new_image_range_and_drops_the_series_range(signed: bool) -> None:
    ds = _ranged(signed)
    describe_values(ds, 12, 3000, signed=signed)
    assert (ds.SmallestImagePixelValue, ds.LargestImagePixelValue) == (12, 3000)
    assert ds["LargestImagePixelValue"].VR == ("SS" if signed else "US")
    assert [e.keyword for e in ds] == ["SmallestImagePixelValue", "LargestImagePixelValue"]


def test_describe_values_adds_nothing_and_drops_values_that_do_not_fit() -> None:
    empty = Dataset()
    describe_values(empty, 0, 10, signed=False)
    assert len(empty) == 0
    ds = _ranged(signed=False)
    describe_values(ds, 5, 70000, signed=False)  # 32-bit data: the largest value does not fit US
    assert ds.SmallestImagePixelValue == 5 and "LargestImagePixelValue" not in ds

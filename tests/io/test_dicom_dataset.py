"""Tests of :mod:`ulmed.io.dicom_dataset`: one DICOM file recognised, read, asked and written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.io.dicom_files import copy_in, data
from ulmed.errors import InputError, OutputError
from ulmed.io.dicom_dataset import (
    floats,
    frame_value,
    is_dicom_file,
    read_dataset,
    relative_to,
    short_reason,
    slice_normal,
    transfer_syntax,
    unsupported,
    write_dataset,
)


def test_dicom_files_are_recognised_with_or_without_the_preamble(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.3.4"
    bare = tmp_path / "bare"
    pydicom.dcmwrite(bare, ds, implicit_vr=True, little_endian=True)  # no preamble, no 'DICM'
    assert bare.read_bytes()[128:132] != b"DICM"
    (text := tmp_path / "notes.dcm").write_text("not an image\n")
    assert is_dicom_file(data("CT_small.dcm")) and is_dicom_file(bare)
    assert not is_dicom_file(text) and not is_dicom_file(tmp_path / "missing.dcm") and not is_dicom_file(tmp_path)


def test_relative_to_names_a_file_outside_the_root(tmp_path: Path) -> None:
    (src,) = copy_in(["CT_small.dcm"], tmp_path / "in" / "a")
    assert relative_to(src, tmp_path / "in") == Path("a/CT_small.dcm")
    (tmp_path / "link").symlink_to(tmp_path / "in")
    assert relative_to(tmp_path / "link" / "a" / "CT_small.dcm", tmp_path / "in") == Path("a/CT_small.dcm")
    with pytest.raises(InputError, match="is not inside the input folder") as err:
        relative_to(src, tmp_path / "other")
    assert err.value.path == str(src)


def test_read_dataset_reads_everything_or_says_why_not(tmp_path: Path) -> None:
    ds = read_dataset(data("CT_small.dcm"))
    assert ds.Rows == 128 and len(ds.PixelData) == 128 * 128 * 2
    with pytest.raises(InputError, match="unreadable DICOM .*; re-export the file or remove it"):
        read_dataset(tmp_path)  # a folder: pydicom cannot open it


def test_header_values() -> None:
    ds = pydicom.dcmread(data("CT_small.dcm"))
    assert transfer_syntax(ds) == ExplicitVRLittleEndian and transfer_syntax(Dataset()) == ExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert transfer_syntax(ds) == ImplicitVRLittleEndian
    assert floats(ds, "PixelSpacing") == (0.661468, 0.661468) and floats(ds, "SliceLocation") is None
    ds.PatientName = "Doe^John"
    assert floats(ds, "PatientName") is None  # not numbers
    np.testing.assert_allclose(slice_normal([1, 0, 0, 0, 1, 0]), [0, 0, 1])
    np.testing.assert_allclose(slice_normal([0, 2, 0, 0, 0, -2]), [-1, 0, 0])  # unit length
    assert slice_normal([1, 0, 0, 1, 0, 0]) is None and slice_normal([1, 0, 0]) is None and slice_normal(None) is None


def _group(keyword: str, value: object) -> Dataset:
    item, inner = Dataset(), Dataset()
    setattr(inner, keyword, value)
    item.PixelMeasuresSequence = Sequence([inner])
    return item


def test_frame_value_prefers_the_frame_then_the_shared_group() -> None:
    ds = Dataset()
    ds.PerFrameFunctionalGroupsSequence = Sequence([_group("SliceThickness", 2.5), Dataset()])
    ds.SharedFunctionalGroupsSequence = Sequence([_group("SliceThickness", 1.0)])
    assert frame_value(ds, 0, "PixelMeasuresSequence", "SliceThickness") == 2.5
    assert frame_value(ds, 1, "PixelMeasuresSequence", "SliceThickness") == 1.0  # frame 1 has none
    assert frame_value(ds, 7, "PixelMeasuresSequence", "SliceThickness") == 1.0  # no such frame
    assert frame_value(ds, 0, "PixelMeasuresSequence", "PixelSpacing") is None
    assert frame_value(Dataset(), 0, "PixelMeasuresSequence", "SliceThickness") is None


def test_unsupported_images_say_what_to_do() -> None:
    assert unsupported(pydicom.dcmread(data("CT_small.dcm"))) is None
    assert unsupported(pydicom.dcmread(data("US1_UNCR.dcm"))) is None  # RGB
    assert "palette-colour" in unsupported(pydicom.dcmread(data("OBXXXX1A.dcm")))
    ds = Dataset()
    ds.SamplesPerPixel, ds.BitsAllocated = 2, 16
    assert unsupported(ds) == "2 samples per pixel are not supported; convert to grey or RGB"
    ds.SamplesPerPixel, ds.BitsAllocated = 1, 12
    assert unsupported(ds).startswith("BitsAllocated=12 is not supported")


def test_write_dataset_finishes_the_file_meta(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data("CT_small.dcm"))
    ds.SOPInstanceUID = "1.2.3.4.5"
    assert ds.file_meta.ImplementationClassUID != PYDICOM_IMPLEMENTATION_UID
    write_dataset(ds, tmp_path / "out" / "ct.dcm", "protected copy", "report it", quote=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ct.dcm"]  # no temporary file left
    back = pydicom.dcmread(tmp_path / "out" / "ct.dcm")
    assert back.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5" == back.SOPInstanceUID
    assert back.file_meta.ImplementationClassUID == PYDICOM_IMPLEMENTATION_UID
    assert back.file_meta.ImplementationVersionName.startswith("PYDICOM")  # pydicom's own, not the source's
    assert np.array_equal(back.pixel_array, ds.pixel_array)


@pytest.mark.parametrize("quote", [True, False])
def test_write_dataset_refusals_quote_only_when_allowed(tmp_path: Path, quote: bool) -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    ds.file_meta = FileMetaDataset()  # no transfer syntax: pydicom cannot write it
    with pytest.raises(OutputError) as err:
        write_dataset(ds, tmp_path / "x.dcm", "de-identified copy", "leave it out", quote=quote)
    reason = err.value.reason
    assert reason.startswith("cannot write the de-identified copy (") and reason.endswith("); leave it out")
    said = reason[len("cannot write the de-identified copy (") : -len("); leave it out")]
    cause = err.value.__cause__
    if quote:  # pydicom's own words, chained
        assert cause is not None and said == short_reason(cause) and said != type(cause).__name__
    else:  # its type only, not chained: the text may hold a value of the dataset
        assert cause is None and err.value.__suppress_context__
        assert said in ("ValueError", "AttributeError", "TypeError")
    assert not (tmp_path / "x.dcm").exists()

"""Tests of :mod:`ulmed.io.base`: the options every writer shares, and the target shape check."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ulmed.errors import ConfigError, InputError
from ulmed.io.base import DICOM_ENCODINGS, DicomEncoding, TargetKind, WriteOptions, check_target_shape
from ulmed.io.deidentify import DeidentifyOptions


def test_dicom_encodings_are_the_lossless_ones() -> None:
    assert DICOM_ENCODINGS == ("explicit", "rle", "jpegls", "j2k")
    assert WriteOptions().dicom_encoding is DicomEncoding.EXPLICIT


@pytest.mark.parametrize(("given", "member"), [("rle", DicomEncoding.RLE), ("J2K", DicomEncoding.J2K),
                                               (DicomEncoding.JPEGLS, DicomEncoding.JPEGLS)])
def test_an_encoding_is_kept_as_its_member(given: object, member: DicomEncoding) -> None:
    options = WriteOptions(dicom_encoding=given)
    assert options.dicom_encoding is member and options.dicom_encoding == member.value
    assert pickle.loads(pickle.dumps(options)) == options  # travels to workers


@pytest.mark.parametrize("lossy", ["jpeg", "jpeg2000", "", "baseline"])
def test_a_lossy_or_unknown_encoding_is_refused_with_the_choices(lossy: str) -> None:
    with pytest.raises(ConfigError, match="DICOM output encoding") as err:
        WriteOptions(dicom_encoding=lossy)
    message = str(err.value)
    assert all(f"'{e}'" in message for e in DICOM_ENCODINGS)
    assert message.endswith("; lossy encodings are refused because they would erase the perturbation")


def test_deidentify_must_be_its_options() -> None:
    assert WriteOptions(deidentify=DeidentifyOptions("a seed")).deidentify == DeidentifyOptions("a seed")
    with pytest.raises(ConfigError, match="deidentify must be DeidentifyOptions or None, not str"):
        WriteOptions(deidentify="a seed")


def test_a_target_of_the_image_shape_comes_back_contiguous() -> None:
    target = np.arange(12, dtype=np.uint8).reshape(4, 3).T  # a transposed view: not C-contiguous
    out = check_target_shape(target, (3, 4), Path("m.png"), Path("a.png"), TargetKind.MASK)
    assert out.flags.c_contiguous and np.array_equal(out, target)
    assert check_target_shape(target, [3, 4], Path("m.png"), None, "mask") is not None  # the value works too


@pytest.mark.parametrize(("kind", "expected"), [
    (TargetKind.MASK, "mask size (H, W) = (3, 4) does not match image a.png size (4, 3); "
                      "check that this mask belongs to that image"),
    ("label map", "label map shape (3, 4) does not match image a.png shape (4, 3); "
                  "check that this label map belongs to that image"),
])
def test_a_target_of_another_shape_names_both_files(kind: object, expected: str) -> None:
    with pytest.raises(InputError) as err:
        check_target_shape(np.zeros((3, 4)), (4, 3), Path("m.png"), Path("a.png"), kind)
    assert err.value.reason == expected and err.value.path == "m.png"


def test_an_unknown_target_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="target kind"):
        check_target_shape(np.zeros((2, 2)), (2, 2), Path("m.png"), None, "box")

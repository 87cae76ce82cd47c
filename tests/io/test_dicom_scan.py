"""Tests of :mod:`ulmed.io.dicom_scan`: files sorted into series, non-image objects, bad files, duplicates."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pydicom
import pytest

from tests.io.dicom_files import copy_in, data, protect_all, rewritten
from ulmed.errors import InputError
from ulmed.io.dicom_dataset import is_dicom_file
from ulmed.io.dicom_read import read_series
from ulmed.io.dicom_scan import scan_dicom, series_key_hash
from ulmed.io.dicom_series import DicomSeries


def test_bad_inputs_are_reported_and_not_written(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (good,) = copy_in(["MR_small.dcm"], root)
    whole = data("CT_small.dcm").read_bytes()
    truncated = root / "truncated.dcm"
    truncated.write_bytes(whole[: len(whole) // 2])
    text = root / "x.dcm"
    text.write_text("not an image\n")
    assert is_dicom_file(good) and not is_dicom_file(text) and not is_dicom_file(root / "missing.dcm")

    scan = scan_dicom(root, [good, truncated, text])
    reasons = dict(scan.bad)
    assert set(reasons) == {truncated, text} and all(r and ";" in r for r in reasons.values())
    assert [s.files for s in scan.series] == [[good]]
    pairs = protect_all(root, tmp_path / "out")
    assert [dst.name for _, dst in pairs] == ["MR_small.dcm"]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["MR_small.dcm"]

    with pytest.raises(InputError, match=re.escape(str(truncated))):
        read_series(DicomSeries(series_uid="1.2.3", files=[truncated], key="./x"), root)


def test_duplicate_instances_are_kept_once(tmp_path: Path, sample_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    shutil.copytree(sample_data / "dicom" / "ct_series", root / "ct_series")
    (root / "ct_series_copy").mkdir()
    shutil.copy(root / "ct_series" / "17136", root / "ct_series_copy" / "17136")  # the same instance again
    os.symlink(root / "ct_series" / "17106", root / "a_link.dcm")  # sorts first, but is only a link
    shutil.copy(sample_data / "dicom" / "rtstruct.dcm", root / "rtstruct.dcm")
    shutil.copy(sample_data / "dicom" / "rtstruct.dcm", root / "rtstruct_again.dcm")
    caplog.set_level("WARNING", logger="ulmed")
    scan = scan_dicom(root, sorted(p for p in root.rglob("*") if p.is_file()))
    (series,) = scan.series
    assert [p.relative_to(root).parent.name for p in series.files] == ["ct_series"] * 4
    assert dict((p.relative_to(root).as_posix(), r) for p, r in scan.skipped) == {
        "a_link.dcm": "duplicate of ct_series/17106 (same SOPInstanceUID); written once",
        "ct_series_copy/17136": "duplicate of ct_series/17136 (same SOPInstanceUID); written once",
        "rtstruct_again.dcm": "duplicate of rtstruct.dcm (same SOPInstanceUID); copied once",
    }
    assert scan.non_image == [root / "rtstruct.dcm"] and not scan.bad and series.note is None
    assert sum("duplicate of" in r.getMessage() for r in caplog.records) == 3


def test_a_series_split_by_size_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    uid = pydicom.dcmread(data("CT_small.dcm")).SeriesInstanceUID
    rewritten("CT_small.dcm", root / "a.dcm")
    rewritten("MR_small.dcm", root / "b.dcm", SeriesInstanceUID=uid, ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    caplog.set_level("WARNING", logger="ulmed")
    scan = scan_dicom(root, [root / "a.dcm", root / "b.dcm"])
    assert len(scan.series) == 2 and {s.series_uid for s in scan.series} == {uid}
    for series in scan.series:
        assert series.note is not None
        assert series.note.startswith("series split into 2 parts because its slices differ in size")
    assert [r.getMessage() for r in caplog.records if "split into 2 parts" in r.getMessage()]


def test_series_keys_are_the_folder_and_a_keyed_hash(tmp_path: Path) -> None:
    (src,) = copy_in(["CT_small.dcm"], tmp_path / "in" / "study")
    uid = pydicom.dcmread(src).SeriesInstanceUID
    (series,) = scan_dicom(tmp_path / "in", [src], key_salt="salt-a").series
    assert series.key == "study/" + series_key_hash(uid, "salt-a") and re.fullmatch(r"study/[0-9a-f]{12}", series.key)
    assert (series.series_uid, series.files, series.note) == (uid, [src], None)
    assert series_key_hash(uid, "salt-a") != series_key_hash(uid, "salt-b")
    assert series_key_hash(uid, "salt-a", 8) == series_key_hash(uid, "salt-a")[:8]


def test_non_image_objects_and_multi_frame_instances(tmp_path: Path, sample_data: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(sample_data / "dicom" / "rtstruct.dcm", root / "rtstruct.dcm")
    first = copy_in(["emri_small.dcm"], root)[0]
    second = rewritten("emri_small.dcm", root / "again.dcm", SOPInstanceUID="1.2.826.0.1.3680043.8.498.1.2")
    palette = copy_in(["OBXXXX1A.dcm"], root)[0]
    scan = scan_dicom(root, [first, second, palette, root / "rtstruct.dcm"], key_salt="s")
    assert scan.non_image == [root / "rtstruct.dcm"] and not scan.skipped
    assert [(p, r.split(";")[0]) for p, r in scan.bad] == [(palette, "palette-colour images are not supported")]
    assert sorted(s.files[0].name for s in scan.series) == ["again.dcm", "emri_small.dcm"]  # one series each
    uid = pydicom.dcmread(first).SeriesInstanceUID
    for series in scan.series:
        sop = pydicom.dcmread(series.files[0]).SOPInstanceUID
        assert series.key == f"./{series_key_hash(uid, 's')}-{series_key_hash(sop, 's', 8)}"
        assert "several multi-frame instances" in series.note


def test_slices_are_ordered_along_their_normal_not_by_name(tmp_path: Path, sample_data: Path) -> None:
    root = tmp_path / "in"
    shutil.copytree(sample_data / "dicom" / "ct_series", root)
    files = sorted(root.iterdir())
    heights = {p.name: float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in files}
    (series,) = scan_dicom(root, files[::-1]).series  # the order given does not matter
    assert [heights[p.name] for p in series.files] == sorted(heights.values())


def test_a_file_the_system_will_not_open_is_said_to_be_unreadable_not_to_be_no_dicom(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    import ulmed.io.dicom_dataset

    root = tmp_path / "in"
    good, locked = copy_in(["MR_small.dcm", "CT_small.dcm"], root)
    real_open = builtins.open

    def guarded(file, *args, **kwargs):  # the system refuses this one file (root reads through chmod 000)
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(ulmed.io.dicom_dataset.pydicom, "dcmread", _refusing(locked))
    scan = scan_dicom(root, [good, locked])
    assert [s.files for s in scan.series] == [[good]]
    assert dict(scan.bad)[locked] == "cannot be read (Permission denied); check its permissions, then rerun"


def _refusing(locked: Path):
    """pydicom's ``dcmread``, refused for ``locked`` as the system would refuse it."""
    real = pydicom.dcmread

    def read(fp, *args, **kwargs):
        if str(fp) == str(locked):
            raise PermissionError(13, "Permission denied", str(fp))
        return real(fp, *args, **kwargs)

    return read

"""Tests of :mod:`ulmed.io.dicom_write`: records written back as derived series, pixel-exact and within budget."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless

from tests.io.dicom_files import OPTIONS, copy_in, digest, hide_jpegls_codecs, protect_all
from ulmed.errors import ConfigError, MissingDependencyError, OutputError
from ulmed.io.base import WriteOptions
from ulmed.io.dicom_read import read_series
from ulmed.io.dicom_scan import scan_dicom
from ulmed.io.dicom_write import new_uid, write_series


@pytest.mark.parametrize(("name", "quanta"), [("CT_small.dcm", 3), ("MR2_UNCR.dcm", 2)])
def test_known_perturbation_reads_back_within_one_quantum(tmp_path: Path, name: str, quanta: int) -> None:
    (src,) = copy_in([name], tmp_path / "in")
    record = read_series(scan_dicom(tmp_path / "in", [src]).series[0], tmp_path / "in")
    q = record.mapping.quantum
    delta = np.full(record.image.shape, record.mapping.native_to_unit_eps(quanta * q), dtype=np.float32)
    perturbed = record.with_perturbation(delta)
    expected = np.clip(record.image + quanta * q, record.mapping.low, record.mapping.high)
    ((_, dst),) = write_series(perturbed, tmp_path / "in", tmp_path / "out", OPTIONS)
    back = read_series(scan_dicom(tmp_path / "out", [dst]).series[0], tmp_path / "out")
    assert np.abs(back.image - expected).max() <= q + 1e-9
    assert np.mean(back.image - record.image) > (quanta - 1) * q  # the noise really was written
    stored = pydicom.dcmread(dst).pixel_array.astype(np.int64) - pydicom.dcmread(src).pixel_array
    assert stored.min() >= 0 and stored.max() <= quanta


ENCODINGS = [("rle", RLELossless), ("jpegls", JPEGLSLossless), ("j2k", JPEG2000Lossless)]


@pytest.mark.parametrize(("encoding", "uid"), ENCODINGS)
@pytest.mark.parametrize("name", ["CT_small.dcm", "emri_small.dcm", "US1_UNCR.dcm"])
def test_lossless_reencoding_is_pixel_exact(tmp_path: Path, encoding: str, uid: UID, name: str) -> None:
    (src,) = copy_in([name], tmp_path / "in")
    options = WriteOptions(method="none", budget="0", dicom_encoding=encoding)
    ((_, dst),) = protect_all(tmp_path / "in", tmp_path / "out", options)
    a, b = pydicom.dcmread(src), pydicom.dcmread(dst)
    assert b.file_meta.TransferSyntaxUID == uid
    assert np.array_equal(a.pixel_array, b.pixel_array)
    if a.SamplesPerPixel == 3:
        assert b.PhotometricInterpretation == ("YBR_RCT" if encoding == "j2k" else "RGB")


def test_missing_encoder_raises_missing_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "in"
    (plain,) = copy_in(["MR_small.dcm"], root)
    hide_jpegls_codecs(monkeypatch)
    record = read_series(scan_dicom(root, [plain]).series[0], root)
    options = WriteOptions(method="none", budget="0", dicom_encoding="jpegls")
    with pytest.raises(MissingDependencyError, match=r"ulmed\[codecs\]"):
        write_series(record, root, tmp_path / "out", options)
    assert not (tmp_path / "out" / "MR_small.dcm").exists()


def test_new_uid_is_valid_deterministic_and_salted() -> None:
    uid = new_uid("1.2.840.113619.2.1.1", "salt")
    assert uid == new_uid("1.2.840.113619.2.1.1", "salt") and UID(uid).is_valid and len(uid) <= 64
    assert uid != new_uid("1.2.840.113619.2.1.1", "other")
    assert new_uid("1.2", "a") != new_uid("2", "a1.")  # sources are not simply concatenated


def test_output_inside_input_is_refused(tmp_path: Path) -> None:
    (src,) = copy_in(["CT_small.dcm"], tmp_path / "in")
    record = read_series(scan_dicom(tmp_path / "in", [src]).series[0], tmp_path / "in")
    before = digest([src])
    with pytest.raises(OutputError, match="overwrite"):
        write_series(record, tmp_path / "in", tmp_path / "in", OPTIONS)
    assert digest([src]) == before


RANGE_KEYWORDS = ("SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
                  "LargestPixelValueInSeries", "SmallestImagePixelValueInPlane", "LargestImagePixelValueInPlane")


def test_written_headers_state_the_written_pixel_range(tmp_path: Path, sample_data: Path) -> None:
    root = tmp_path / "in"
    shutil.copytree(sample_data / "dicom" / "ct_series", root / "ct")
    for path in sorted((root / "ct").iterdir()):  # a modality's (stale) claims about the stored values
        ds = pydicom.dcmread(path)
        for keyword, value in zip(RANGE_KEYWORDS, (0, 4000, -5, 5000, 1, 2)):
            ds.add_new(keyword, "SS", value)
        ds.save_as(path)
    copy_in(["MR_small.dcm"], root)  # says 0..4000, holds 127..2145
    scan = scan_dicom(root, sorted(p for p in root.rglob("*") if p.is_file()))
    assert len(scan.series) == 2
    for series in scan.series:
        record = read_series(series, root)
        q = record.mapping.quantum
        delta = np.full(record.image.shape, record.mapping.native_to_unit_eps(3 * q), dtype=np.float32)
        for _, dst in write_series(record.with_perturbation(delta), root, tmp_path / "out", OPTIONS):
            ds = pydicom.dcmread(dst)
            stored = ds.pixel_array
            assert (ds.SmallestImagePixelValue, ds.LargestImagePixelValue) == (stored.min(), stored.max()), dst.name
            assert ds["LargestImagePixelValue"].VR == ("SS" if ds.PixelRepresentation else "US")
            assert not any(k in ds for k in RANGE_KEYWORDS[2:]), dst.name  # a series range one file cannot know


def test_series_with_a_slope_per_slice_keeps_the_budget_on_every_slice(tmp_path: Path) -> None:
    """Each slice moves by whole steps of its own RescaleSlope, so the writer stores exactly the protected values."""
    from ulmed.core.budget import Budget

    root = tmp_path / "in"
    src_dir = Path(__file__).resolve().parents[2] / "sample_data/dicom/ct_series"
    shutil.copytree(src_dir, root)
    for path, slope in zip(sorted(root.iterdir()), ["1", "0.5", "1", "0.25"], strict=True):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = slope
        ds.save_as(path)
    record = read_series(scan_dicom(root, sorted(root.iterdir())).series[0], root)
    assert record.quantum_map is not None and sorted(np.unique(record.quantum_map)) == [0.25, 0.5, 1.0]
    budget = Budget.parse("8/255")
    eps_native = budget.in_native(record.mapping)  # 77.49 HU: 77 steps of 1, 154 of 0.5, 309 of 0.25
    sign = np.where(np.random.default_rng(0).random(record.image.shape) < 0.5, -1.0, 1.0)
    protected = record.with_perturbation(sign * budget.in_unit(record.mapping), eps_native)
    pairs = write_series(protected, root, tmp_path / "out", OPTIONS)
    for index, (src, dst) in enumerate(pairs):
        before, after = pydicom.dcmread(src), pydicom.dcmread(dst)
        slope = float(before.RescaleSlope)
        moved = (after.pixel_array.astype(np.int64) - before.pixel_array) * slope
        assert np.abs(moved).max() <= eps_native, src.name
        assert np.abs(moved).max() == np.floor(eps_native / slope) * slope  # up to the last whole step of this slice
        written = after.pixel_array * slope + float(after.RescaleIntercept)
        np.testing.assert_allclose(written, protected.image[0, index], rtol=0, atol=1e-9)  # the metrics' values


def test_only_a_dicom_record_of_its_own_shape_is_written(tmp_path: Path) -> None:
    (src,) = copy_in(["CT_small.dcm"], tmp_path / "in")
    record = read_series(scan_dicom(tmp_path / "in", [src]).series[0], tmp_path / "in")
    with pytest.raises(ConfigError, match="not a DICOM record; use the writer of its kind"):
        write_series(dataclasses.replace(record, kind="image"), tmp_path / "in", tmp_path / "out", OPTIONS)
    two_frames = dataclasses.replace(record, image=np.stack([record.image] * 2, axis=1), spatial_dims=3)
    with pytest.raises(ConfigError, match=r"image shape \(1, 2, 128, 128\) does not fit the 1 frames"):
        write_series(two_frames, tmp_path / "in", tmp_path / "out", OPTIONS)
    two_channels = dataclasses.replace(record, image=np.concatenate([record.image] * 2))
    with pytest.raises(ConfigError, match=r"image shape \(2, 128, 128\) does not fit"):
        write_series(two_channels, tmp_path / "in", tmp_path / "out", OPTIONS)
    assert not (tmp_path / "out").exists()


def test_stored_values_are_rounded_and_clipped_to_bits_stored(tmp_path: Path) -> None:
    (src,) = copy_in(["CT_small.dcm"], tmp_path / "in")
    record = read_series(scan_dicom(tmp_path / "in", [src]).series[0], tmp_path / "in")
    native = record.image.astype(np.float64)
    native[0, 0, :3] = [-1e6, 1e6, 100.4]  # far outside the stored range, and between two steps
    ((_, dst),) = write_series(dataclasses.replace(record, image=native), tmp_path / "in", tmp_path / "out", OPTIONS)
    out = pydicom.dcmread(dst)
    low, high = record.handle.stored_range
    intercept = float(out.RescaleIntercept)
    assert out.pixel_array[0, :3].tolist() == [low, high, round(100.4 - intercept)]
    np.testing.assert_array_equal(out.pixel_array[1:], pydicom.dcmread(src).pixel_array[1:])


@pytest.mark.parametrize("dtype", ["i2", "u2", "i4", "u4", "i8", "f4", "f8"])
def test_stored_values_equal_the_plain_rescale_round_clip(dtype: str) -> None:
    """The in-place and same-dtype paths of ``_stored_values`` give ``clip(rint((native - b) / s))`` exactly."""
    from ulmed.io.dicom_write import _stored_values

    rng = np.random.default_rng(7)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.iinfo("i4")
    cases = [(1.0, -1024.0), (1.0, 0.0), (1.0, 5.0), (2.5, -1024.0), (1.0, -0.5), (1.0, float(info.max) - 3)]
    layouts = [("<i2", (-2048, 2047)), ("<u2", (0, 4095)), ("<i4", (-(2**31), 2**31 - 1))]
    for (slope, intercept), (stored_dtype, stored_range) in [(c, layout) for c in cases for layout in layouts]:
        frames = 3
        low, high = max(int(info.min), -3 * 2**15), min(int(info.max), 3 * 2**15)
        native = rng.integers(low, high, (1, frames, 4, 5)).astype(dtype)
        extremes = [info.min, info.max] if np.dtype(dtype).itemsize < 8 else [-(2**40), 2**40]  # int64: no wrap
        native.reshape(-1)[:2] = extremes if np.dtype(dtype).kind in "iu" else [-1e9, 1e9]
        slopes = np.full(frames, slope)
        intercepts = np.array([intercept, intercept, intercept if slope != 1 else intercept + 1])
        for b in (np.full(frames, intercept), intercepts):
            handle = _handle(slopes, b, stored_dtype, stored_range)
            s, bb = slopes[None, :, None, None], b[None, :, None, None]
            want = np.clip(np.rint((native.astype(np.float64) - bb) / s), *stored_range).astype(stored_dtype)
            if native.dtype.kind in "iu" and slope == 1 and np.all(b == np.round(b)):
                want = np.clip(native.astype(np.int64) - bb.astype(np.int64), *stored_range).astype(stored_dtype)
            got = _stored_values(native, handle, 0)
            assert got.dtype == np.dtype(stored_dtype) and np.array_equal(got, want), (dtype, slope, b, stored_dtype)


def _handle(slopes: np.ndarray, intercepts: np.ndarray, stored_dtype: str, stored_range: tuple[int, int]):
    from ulmed.io.dicom_read import DicomHandle

    return DicomHandle(files=(), frames=(len(slopes),), slopes=slopes, intercepts=intercepts,
                       stored_dtype=stored_dtype, stored_range=stored_range, series_uid="1.2", multi_frame=True)


@pytest.mark.parametrize("name", ["explicit_VR-UN.dcm", "MR_small_bigendian.dcm", "emri_small.dcm"])
def test_the_datasets_the_reader_kept_write_the_bytes_of_a_fresh_read(tmp_path: Path, name: str) -> None:
    """The writer takes the reader's datasets once; what the reader looked at (a UN element it converted) does not
    change the bytes, and a second write of the record, which reads the file again, writes the same ones."""
    (src,) = copy_in([name], tmp_path / "in")
    record = read_series(scan_dicom(tmp_path / "in", [src]).series[0], tmp_path / "in")
    assert len(record.handle.datasets) == 1 and "PixelData" not in record.handle.datasets[0]
    digests: dict[Path, str] = {}
    ((_, first),) = write_series(record, tmp_path / "in", tmp_path / "a", OPTIONS, digests)
    assert record.handle.datasets == []  # taken
    ((_, again),) = write_series(record, tmp_path / "in", tmp_path / "b", OPTIONS)
    assert first.read_bytes() == again.read_bytes()
    assert digests == digest([first])


def test_an_odd_number_of_8_bit_pixels_is_padded_to_an_even_length(tmp_path: Path) -> None:
    values = np.arange(15, dtype=np.uint8).reshape(3, 5) * 10
    ds = pydicom.dcmread(copy_in(["CT_small.dcm"], tmp_path / "src")[0])
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 3, 5, 8, 8, 7, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = values.tobytes() + b"\0"
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "odd.dcm")
    ((_, dst),) = protect_all(tmp_path / "in", tmp_path / "out")
    written = pydicom.dcmread(dst)
    assert len(written.PixelData) == 16 and written.PixelData[15:] == b"\0"
    np.testing.assert_array_equal(written.pixel_array, values)

"""NIfTI reader/writer on real volumes: MSD hippocampus, MONAI's tiny3d and nibabel's example4d."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path as NIB_DATA

from ulmed.errors import InputError, OutputError
from ulmed.io.nifti import read_label_map, read_nifti, write_nifti

DATA = Path(__file__).resolve().parents[1] / "data"
HIPPO = DATA / "msd_hippocampus"
FLOAT32 = HIPPO / "images" / "hippocampus_003.nii.gz"  # float32 on disk
UINT8 = HIPPO / "images" / "hippocampus_033.nii.gz"  # uint8 on disk
TINY = DATA / "tiny3d" / "anatomical.nii"  # big-endian int16, uncompressed
EX4D = Path(NIB_DATA) / "example4d.nii.gz"  # 4D int16 with header extensions
VOLUMES = [FLOAT32, UINT8, TINY, EX4D]



def _raw_header(path: Path) -> nib.Nifti1Header:
    """The header exactly as stored (nib.load consumes scl_slope/scl_inter into the proxy)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        return nib.Nifti1Header.from_fileobj(fh, check=False)


def _payload(path: Path) -> bytes:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        return fh.read()


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _perturb(shape: tuple[int, ...], seed: int = 0, size: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """+-size (unit space) on a random 10% of voxels; returns the delta and the mask of moved voxels."""
    rng = np.random.default_rng(seed)
    moved = rng.random(shape) < 0.1
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return (moved * sign * size).astype(np.float32), moved


@pytest.mark.parametrize("src", VOLUMES, ids=lambda p: p.name)
def test_zero_round_trip_keeps_file(src: Path, tmp_path: Path) -> None:
    rec = read_nifti(src, key=src.name)
    img = nib.load(src)
    assert rec.kind == "nifti" and rec.spatial_dims == 3
    if img.ndim == 4:
        assert rec.image.shape == (img.shape[3], *img.shape[:3])
        np.testing.assert_array_equal(rec.image[1], img.get_fdata()[..., 1])
    else:
        assert rec.image.shape == (1, *img.shape)
        np.testing.assert_array_equal(rec.image[0], img.get_fdata())
    assert rec.meta["shape"] == img.shape and rec.meta["ndim"] == img.ndim
    assert rec.meta["dtype"] == str(img.get_data_dtype().newbyteorder("="))
    assert rec.meta["affine_codes"] == (int(img.header["qform_code"]), int(img.header["sform_code"]))
    assert rec.meta["spacing"] == pytest.approx(img.header.get_zooms())

    out = tmp_path / src.name
    write_nifti(rec, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # no temp file left behind
    back = nib.load(out)
    # Every header field as stored on disk, scl_slope/scl_inter and vox_offset included:
    # nibabel updates nothing here because shape, dtype, affine and scaling are unchanged.
    assert _raw_header(out).binaryblock == _raw_header(src).binaryblock
    np.testing.assert_array_equal(back.affine, img.affine)
    assert back.get_data_dtype() == img.get_data_dtype()
    assert [(e.get_code(), e.get_content()) for e in back.header.extensions] == [
        (e.get_code(), e.get_content()) for e in img.header.extensions
    ]
    np.testing.assert_array_equal(np.asarray(back.dataobj.get_unscaled()), np.asarray(img.dataobj.get_unscaled()))
    # Header + extensions + voxel bytes: the uncompressed payload is identical.
    assert _payload(out) == _payload(src)


@pytest.mark.parametrize("src", VOLUMES, ids=lambda p: p.name)
def test_known_perturbation_within_one_step(src: Path, tmp_path: Path) -> None:
    rec = read_nifti(src, key=src.name)
    delta, moved = _perturb(rec.image.shape)
    protected = rec.with_perturbation(delta)
    out = tmp_path / src.name
    write_nifti(protected, out)
    again = read_nifti(out, key=src.name)
    step = rec.mapping.quantum
    if step > 0:
        assert np.abs(again.image - protected.image).max() <= 0.5 * step + 1e-9
    else:  # float storage: exact up to float32 rounding
        np.testing.assert_allclose(again.image, protected.image.astype(np.float32), rtol=0, atol=0)
    # Voxels that were not moved come back exactly; moved ones really changed.
    np.testing.assert_array_equal(again.image[~moved], rec.image[~moved])
    assert np.mean(again.image[moved] != rec.image[moved]) > 0.5
    moved_by = np.abs(again.image.astype(np.float64) - rec.image)
    storage_step = step or float(np.spacing(np.float32(np.abs(rec.image).max())))  # float32 rounding
    assert moved_by.max() <= 0.01 * rec.mapping.scale * (1 + 1e-6) + storage_step


def test_int16_with_slope_keeps_scaling_and_step(tmp_path: Path) -> None:
    src = nib.load(FLOAT32)
    header = src.header.copy()
    header.set_data_dtype(np.int16)
    scaled = nib.Nifti1Image(np.rint((src.get_fdata() - 10.0) / 0.5).astype(np.int16), src.affine, header)
    scaled.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(scaled, path)

    rec = read_nifti(path, key="scaled")
    assert rec.mapping.quantum == 0.5
    assert rec.mapping.valid_min == -32768 * 0.5 + 10.0 and rec.mapping.valid_max == 32767 * 0.5 + 10.0
    np.testing.assert_array_equal(rec.image[0], nib.load(path).get_fdata())

    delta, moved = _perturb(rec.image.shape, seed=1, size=0.003)
    protected = rec.with_perturbation(delta)
    out = tmp_path / "out" / "scaled.nii.gz"
    write_nifti(protected, out)
    back = nib.load(out)
    assert back.get_data_dtype() == np.int16
    assert (back.dataobj.slope, back.dataobj.inter) == (0.5, 10.0)
    assert (float(_raw_header(out)["scl_slope"]), float(_raw_header(out)["scl_inter"])) == (0.5, 10.0)
    diff = np.abs(back.get_fdata() - protected.image[0])
    assert diff.max() <= 0.25 + 1e-9  # half of one 0.5 step
    assert np.mean(back.get_fdata()[moved[0]] != rec.image[0][moved[0]]) > 0.9


def test_two_dimensional_nifti_round_trips(tmp_path: Path) -> None:
    src = nib.load(UINT8)
    path = tmp_path / "slice.nii"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[:, :, 10], src.affine, src.header.copy()), path)
    rec = read_nifti(path, key="slice")
    assert rec.image.shape == (1, 33, 48, 1) and rec.spatial_dims == 3
    write_nifti(rec, tmp_path / "out.nii")
    back = nib.load(tmp_path / "out.nii")
    assert back.shape == (33, 48)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(src.dataobj)[:, :, 10])


@pytest.mark.parametrize("name", ["hippocampus_003.nii.gz", "hippocampus_033.nii.gz"])
def test_label_map_matches_nibabel(name: str) -> None:
    label_path = HIPPO / "labels" / name
    expected = nib.load(label_path).get_fdata()
    rec = read_nifti(HIPPO / "images" / name, key=name, label_path=label_path)
    labels = read_label_map(label_path, rec.spatial_shape)
    assert np.issubdtype(labels.dtype, np.integer)  # the 003 label is float32 on disk
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(rec.target, expected)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_label_map_of_wrong_shape_is_refused() -> None:
    label_path = HIPPO / "labels" / "hippocampus_004.nii.gz"
    with pytest.raises(InputError) as err:
        read_nifti(FLOAT32, key="003", label_path=label_path)
    assert "hippocampus_004.nii.gz" in str(err.value) and "hippocampus_003.nii.gz" in str(err.value)
    with pytest.raises(InputError, match="does not match"):
        read_label_map(label_path, (34, 52, 35))


def test_nan_is_refused_naming_the_file(tmp_path: Path) -> None:
    src = nib.load(FLOAT32)
    data = src.get_fdata(dtype=np.float32)
    data[5, 6, 7] = np.nan
    path = tmp_path / "with_nan.nii.gz"
    nib.save(nib.Nifti1Image(data, src.affine, src.header.copy()), path)
    with pytest.raises(InputError) as err:
        read_nifti(path, key="with_nan")
    assert str(path) in str(err.value) and "NaN" in str(err.value)


@pytest.mark.parametrize("src", [FLOAT32, TINY], ids=lambda p: p.name)
def test_truncated_file_is_refused(src: Path, tmp_path: Path) -> None:
    path = tmp_path / src.name
    payload = src.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(InputError) as err:
        read_nifti(path, key=src.name)
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_missing_file_and_wrong_output(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_nifti(tmp_path / "absent.nii.gz", key="absent")
    rec = read_nifti(UINT8, key="033")
    with pytest.raises(OutputError, match=r"\.nii"):
        write_nifti(rec, tmp_path / "out.png")
    assert not any(tmp_path.iterdir())


def test_inputs_are_never_modified(tmp_path: Path) -> None:
    labels = [HIPPO / "labels" / FLOAT32.name]
    before = {p: (_sha(p), p.stat().st_mtime_ns) for p in VOLUMES + labels}
    rec = read_nifti(FLOAT32, key="003", label_path=labels[0])
    write_nifti(rec.with_perturbation(_perturb(rec.image.shape)[0]), tmp_path / FLOAT32.name)
    for src in VOLUMES[1:]:
        write_nifti(read_nifti(src, key=src.name), tmp_path / "x" / src.name)
    shutil.rmtree(tmp_path / "x")
    assert {p: (_sha(p), p.stat().st_mtime_ns) for p in before} == before


def test_a_volume_the_system_refuses_to_read_is_not_called_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    import ulmed.io.nifti

    path = Path(__file__).resolve().parents[1] / "data/msd_hippocampus/images/hippocampus_015.nii.gz"

    def refused(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(ulmed.io.nifti.nib, "load", refused)
    with pytest.raises(InputError, match=r"cannot be read \(Permission denied\); check its permissions") as err:
        ulmed.io.nifti.read_nifti(path, key="hippocampus_015.nii.gz")
    assert "corrupt" not in str(err.value)

"""One case into nnU-Net's raw format: 2D images nnU-Net's PNG reader takes, volumes unchanged, labels 0..K."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from ulmed.errors import InputError
from ulmed.eval.nnunet.convert import (
    copy_volume,
    map_labels,
    read_image_2d,
    read_labels,
    volume_geometry,
    write_label_volume,
    write_png,
)


def test_grey_8bit_png_is_read_as_stored(real_data):
    path = real_data / "hc18/images/005_HC.png"
    arr = read_image_2d(path)
    assert arr.dtype == np.uint8 and arr.shape == (270, 400)
    assert np.array_equal(arr, np.asarray(Image.open(path)))


def test_16bit_png_keeps_16_bits_through_a_png_write(tmp_path):
    data = (np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "in.png")
    arr = read_image_2d(tmp_path / "in.png")
    assert arr.dtype == np.uint16 and np.array_equal(arr, data)
    write_png(arr, tmp_path / "out.png")
    from skimage import io  # nnU-Net's NaturalImage2DIO reads with skimage

    assert np.array_equal(io.imread(tmp_path / "out.png"), data)


def test_palette_image_becomes_grey_or_rgb(tmp_path):
    grey = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (8, 1))).convert("P")
    grey.save(tmp_path / "grey.png")
    arr = read_image_2d(tmp_path / "grey.png")
    assert arr.ndim == 2 and arr.dtype == np.uint8 and arr[0, 1] == 4
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "colour.png")
    arr = read_image_2d(tmp_path / "colour.png")
    assert arr.shape == (8, 8, 3) and arr[0, 0, 0] > arr[0, 0, 1]


def test_float_tiff_is_mapped_onto_16_bits(tmp_path):
    data = np.linspace(-1.5, 2.5, 20 * 10, dtype=np.float32).reshape(10, 20)
    tifffile.imwrite(tmp_path / "f.tif", data)
    arr = read_image_2d(tmp_path / "f.tif")
    assert arr.dtype == np.uint16 and arr.min() == 0 and arr.max() == 65535
    assert np.all(np.diff(arr.ravel().astype(np.int64)) >= 0)  # the order of values is kept


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png"):
        read_image_2d(bad)
    with pytest.raises(InputError, match="not found"):
        read_image_2d(tmp_path / "missing.png")


def test_mask_shape_is_checked(real_data):
    with pytest.raises(InputError, match="does not match"):
        read_labels(real_data / "hc18/masks/005_HC.png", real_data / "hc18/images/005_HC.png", (10, 10))


def test_map_labels_uses_the_table():
    out = map_labels(np.array([[0, 255], [255, 0]]), {0: 0, 255: 1}, None)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(InputError, match="7"):
        map_labels(np.array([0, 7]), {0: 0, 255: 1}, None)


def test_nii_volume_is_gzipped_unchanged(real_data, tmp_path):
    src = nib.load(real_data / "tiny3d/anatomical.nii")
    copy_volume(real_data / "tiny3d/anatomical.nii", tmp_path / "v.nii.gz")
    out = nib.load(tmp_path / "v.nii.gz")
    assert np.array_equal(np.asarray(out.dataobj), np.asarray(src.dataobj))
    assert np.allclose(out.affine, src.affine) and out.header.get_data_dtype() == src.header.get_data_dtype()


def test_label_volume_keeps_the_label_geometry_and_refuses_a_mismatch(real_data, tmp_path):
    image, label = real_data / "msd_hippocampus/images/hippocampus_003.nii.gz", \
        real_data / "msd_hippocampus/labels/hippocampus_003.nii.gz"
    shape, affine = volume_geometry(image)
    labels = map_labels(read_labels(label, image, shape), {0: 0, 1: 1, 2: 2}, label)
    write_label_volume(labels, label, image, tmp_path / "l.nii.gz")
    out = nib.load(tmp_path / "l.nii.gz")
    assert out.get_data_dtype() == np.uint8 and np.allclose(out.affine, affine)
    assert np.array_equal(np.asarray(out.dataobj), labels)
    moved = nib.load(label)
    shifted = nib.Nifti1Image(np.asarray(moved.dataobj), moved.affine + _shift(5.0))
    nib.save(shifted, tmp_path / "moved.nii.gz")
    with pytest.raises(InputError, match="geometry"):
        write_label_volume(labels, tmp_path / "moved.nii.gz", image, tmp_path / "l2.nii.gz")


def _shift(mm: float) -> np.ndarray:
    out = np.zeros((4, 4))
    out[0, 3] = mm
    return out


def test_a_4d_volume_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "v4.nii.gz")
    with pytest.raises(InputError, match="one 3D volume"):
        volume_geometry(tmp_path / "v4.nii.gz")

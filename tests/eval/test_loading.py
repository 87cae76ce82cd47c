"""Arrays for the victims: 2D letterbox with the trainers' kernels, colour, masks, volumes with spacing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from ulmed.errors import ConfigError, InputError
from ulmed.eval.folders import EvalItem
from ulmed.eval.loading import (
    KERNELS,
    Preprocess,
    fit_image_2d,
    fit_nd,
    load_item,
    load_items,
    mask_classes,
    read_image_2d,
    resample,
    resize_plane,
)


def test_preprocess_validates_and_records():
    prep = Preprocess(size=[32, 48], kernel="CV-AREA", shape=[8, 8, 8], spacing=[1, 1.5, 2])
    assert prep.size == (32, 48) and prep.kernel == "cv-area" and prep.spacing == (1.0, 1.5, 2.0)
    assert prep.record(2) == {"size": (32, 48), "keep_aspect": True, "kernel": "cv-area"}
    assert prep.record(3) == {"shape": (8, 8, 8), "spacing": (1.0, 1.5, 2.0)}
    assert KERNELS == ("pil", "torch", "cv-area", "cv-linear")
    for kw, words in [({"size": (0, 4)}, "size"), ({"shape": (4, 4)}, "shape"), ({"spacing": (1, -1, 1)}, "spacing"),
                      ({"kernel": "lanczos"}, "resize kernel"), ({"size": ("a", 4)}, "size")]:
        with pytest.raises(ConfigError, match=words):
            Preprocess(**kw)


def test_kernels_are_the_trainers_ones():
    rng = np.random.default_rng(0)
    plane = rng.random((40, 30)).astype(np.float32)
    x = torch.from_numpy(plane)[None, None]
    expected = torch.nn.functional.interpolate(x, size=(20, 15), mode="bilinear", antialias=True)[0, 0].numpy()
    np.testing.assert_allclose(resize_plane(plane, (20, 15), "torch"), expected, atol=1e-6)
    area = resize_plane(plane, (20, 15), "cv-area")
    np.testing.assert_allclose(area, plane.reshape(20, 2, 15, 2).mean(axis=(1, 3)), atol=1e-5)  # box averages
    pil = np.asarray(Image.fromarray(plane).resize((15, 20), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resize_plane(plane, (20, 15), "pil"), pil)
    linear = resize_plane(plane, (17, 13), "cv-linear")  # bilinear without antialiasing: another result
    assert linear.shape == (17, 13) and linear.dtype == np.float32
    assert not np.allclose(linear, resize_plane(plane, (17, 13), "cv-area"), atol=1e-3)


def test_letterbox_and_stretch():
    image = np.ones((1, 40, 20), np.float32)
    boxed = fit_image_2d(image, Preprocess(size=(16, 16)))
    assert boxed.shape == (1, 16, 16) and boxed[0, :, :4].max() == 0 and boxed[0, :, 4:12].min() > 0.99
    stretched = fit_image_2d(image, Preprocess(size=(16, 16), keep_aspect=False))
    assert stretched.min() > 0.99


def test_grey_16_bit_and_colour_images(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500
    Image.fromarray(grey).save(tmp_path / "g16.png")
    arr, scale = read_image_2d(tmp_path / "g16.png")
    assert scale == 65535.0 and arr.shape == (1, 12, 10) and arr.max() == pytest.approx(grey.max() / 65535)
    rgb = np.zeros((12, 10, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 51
    Image.fromarray(rgb).save(tmp_path / "c.png")
    colour, scale = read_image_2d(tmp_path / "c.png", channels=3)
    assert scale == 255.0 and colour.shape == (3, 12, 10) and colour[:, 0, 0].tolist() == pytest.approx([1, 0, 0.2])
    as_grey = read_image_2d(tmp_path / "c.png")[0]
    assert as_grey.shape == (1, 12, 10) and 0 < as_grey.max() < 1  # Pillow's luma
    replicated = read_image_2d(tmp_path / "g16.png", channels=3)[0]
    assert replicated.shape == (3, 12, 10) and np.array_equal(replicated[0], replicated[2])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image"):
        read_image_2d(tmp_path / "bad.png")


def test_mask_values():
    assert mask_classes(np.array([[0, 255], [255, 0]], np.uint8)).tolist() == [[0, 1], [1, 0]]
    assert mask_classes(np.array([[0, 1], [2, 0]], np.uint8)).tolist() == [[0, 1], [2, 0]]  # a label map
    assert mask_classes(np.zeros((2, 2), np.uint8)).dtype == np.int64


def test_a_2d_item_with_its_mask(tmp_path):
    image = np.zeros((30, 60), np.uint8)
    image[10:20, 20:40] = 200
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray((image > 0).astype(np.uint8) * 255).save(tmp_path / "m.png")
    x, y = load_item(EvalItem("a.png", tmp_path / "a.png", tmp_path / "m.png"), Preprocess(size=(16, 32)), 2)
    assert x.shape == (1, 16, 32) and y.shape == (16, 32) and set(np.unique(y)) == {0, 1}
    assert y[:, :8].max() == 0 and (x[0] > 0.5).sum() == pytest.approx(y.sum(), abs=8)  # mask follows the image
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(InputError):  # a mask of another size than its image
        load_item(EvalItem("a.png", tmp_path / "a.png", tmp_path / "small.png"), Preprocess(), 2)
    label, = load_items([EvalItem("a.png", tmp_path / "a.png", label=3)], Preprocess(size=(8, 8)), 2)[1]
    assert label == 3


def test_volumes_pad_crop_and_spacing(tmp_path):
    vol = np.zeros((10, 12, 6), np.float32)
    vol[2:8, 3:9, 1:5] = 50.0
    labels = (vol > 0).astype(np.uint8)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "l.nii.gz")
    item = EvalItem("v.nii.gz", tmp_path / "v.nii.gz", tmp_path / "l.nii.gz")
    x, y = load_item(item, Preprocess(shape=(8, 14, 6)), 3)
    assert x.shape == (1, 8, 14, 6) and y.shape == (8, 14, 6) and x.max() == 1.0 and y.sum() == labels.sum()
    x1, y1 = load_item(item, Preprocess(shape=(10, 12, 12), spacing=(1, 1, 1)), 3)  # axis 3 at 2 mm -> 12 voxels
    assert y1.sum() == 2 * labels.sum() and set(np.unique(y1)) == {0, 1} and x1[0, 5, 6, 2:10].min() > 0.5
    assert fit_nd(np.ones((4, 4)), (2, 6)).tolist() == [[0, 1, 1, 1, 1, 0]] * 2
    assert resample(vol, (1, 1, 2), None, order=1) is vol
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8bnot gzip")
    images, _, kept, skipped = load_items([EvalItem("bad.nii.gz", tmp_path / "bad.nii.gz", tmp_path / "l.nii.gz"),
                                           item], Preprocess(shape=(8, 8, 8)), 3)
    assert [i.key for i in kept] == ["v.nii.gz"] and skipped[0][0] == "bad.nii.gz" and "NIfTI" in skipped[0][1]
    with pytest.raises(InputError, match="none of 1 item"):
        load_items(kept[:0] + [EvalItem("bad.nii.gz", tmp_path / "bad.nii.gz")], Preprocess(), 3)

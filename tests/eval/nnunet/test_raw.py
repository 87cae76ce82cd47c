"""The raw nnU-Net data set writer on the real fixtures: layout, dataset.json, labels, geometry, errors."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.conftest import tree_hashes
from ulmed.errors import ConfigError, InputError, OutputError
from ulmed.eval.nnunet.raw import label_table, write_raw_dataset


def _cases(root, split, label_col):
    rows = [r for r in csv.DictReader(open(root / "index.csv")) if r["split"] == split]
    return [(root / r["image"], root / r[label_col]) for r in rows]


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_hc18_masks_become_0_1_and_names_are_indices(real_data, tmp_path):
    root = real_data / "hc18"
    train, test = _cases(root, "train", "mask")[:3], _cases(root, "test", "mask")[:2]
    before = tree_hashes(root)
    raw = write_raw_dataset(train, test, tmp_path, spatial_dims=2)
    assert tree_hashes(root) == before  # inputs are only read
    assert raw.root == tmp_path / "Dataset501_ulmed" and raw.file_ending == ".png"
    assert _tree(raw.root) == ["dataset.json", "imagesTr/case_0000_0000.png", "imagesTr/case_0001_0000.png",
                               "imagesTr/case_0002_0000.png", "imagesTs/case_0000_0000.png",
                               "imagesTs/case_0001_0000.png", "labelsTr/case_0000.png", "labelsTr/case_0001.png",
                               "labelsTr/case_0002.png", "labelsTs/case_0000.png", "labelsTs/case_0001.png"]
    meta = json.loads((raw.root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "label_255": 1} and meta["numTraining"] == 3
    assert meta["channel_names"] == {"0": "image"} and meta["file_ending"] == ".png"
    for (image, mask), i in zip(train, range(3)):
        out_mask = np.asarray(Image.open(raw.root / f"labelsTr/case_{i:04d}.png"))
        assert out_mask.dtype == np.uint8 and set(np.unique(out_mask)) == {0, 1}
        assert np.array_equal(out_mask, (np.asarray(Image.open(mask)) == 255).astype(np.uint8))
        assert np.array_equal(np.asarray(Image.open(raw.root / f"imagesTr/case_{i:04d}_0000.png")),
                              np.asarray(Image.open(image)))
    assert not any("HC" in name for name in _tree(raw.root))


def test_hippocampus_labels_0_1_2_and_affine_kept(real_data, tmp_path):
    root = real_data / "msd_hippocampus"
    train, test = _cases(root, "train", "label"), _cases(root, "test", "label")
    raw = write_raw_dataset(train, test, tmp_path, spatial_dims=3, dataset_id=7, name="hippo")
    assert raw.root.name == "Dataset007_hippo" and raw.n_train == 4 and len(raw.test_images) == 3
    meta = json.loads((raw.root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "label_1": 1, "label_2": 2} and meta["file_ending"] == ".nii.gz"
    for i, (image, label) in enumerate(train):
        src, out = nib.load(image), nib.load(raw.root / f"imagesTr/case_{i:04d}_0000.nii.gz")
        assert np.allclose(out.affine, src.affine) and out.header.get_zooms() == src.header.get_zooms()
        assert np.array_equal(np.asarray(out.dataobj), np.asarray(src.dataobj))
        lab = nib.load(raw.root / f"labelsTr/case_{i:04d}.nii.gz")
        assert lab.get_data_dtype() == np.uint8 and np.allclose(lab.affine, nib.load(label).affine)
        assert np.array_equal(np.asarray(lab.dataobj), np.asarray(nib.load(label).dataobj).astype(np.uint8))
    assert not any("hippocampus" in name for name in _tree(raw.root))


def test_integer_label_maps_are_numbered_in_order(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[:4], mask[8:12] = 3, 7
    Image.fromarray(image).save(tmp_path / "i.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    raw = write_raw_dataset([(tmp_path / "i.png", tmp_path / "m.png")], [], tmp_path / "raw", spatial_dims=2)
    assert raw.labels == {"background": 0, "label_3": 1, "label_7": 2}
    out = np.asarray(Image.open(raw.root / "labelsTr/case_0000.png"))
    assert out[0, 0] == 1 and out[9, 0] == 2 and out[5, 0] == 0


def test_label_table():
    assert label_table({255}) == {0: 0, 255: 1}
    with pytest.raises(InputError, match="nearest"):
        label_table(set(range(300)))


def test_bad_inputs_are_named(real_data, tmp_path):
    root = real_data / "hc18"
    image, mask = _cases(root, "train", "mask")[0]
    other = _cases(root, "train", "mask")[1][0]
    with pytest.raises(InputError, match="not found"):
        write_raw_dataset([(image, tmp_path / "nope.png")], [], tmp_path / "a", spatial_dims=2)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(small)
    with pytest.raises(InputError, match="small.png"):
        write_raw_dataset([(other, small)], [], tmp_path / "b", spatial_dims=2)
    with pytest.raises(ConfigError, match="spatial_dims"):
        write_raw_dataset([(image, mask)], [], tmp_path / "c", spatial_dims=4)
    with pytest.raises(ConfigError, match="pair"):
        write_raw_dataset([image], [], tmp_path / "d", spatial_dims=2)
    with pytest.raises(ConfigError, match="no train"):
        write_raw_dataset([], [], tmp_path / "e", spatial_dims=2)
    with pytest.raises(InputError, match="NIfTI"):
        write_raw_dataset([(image, mask)], [], tmp_path / "f", spatial_dims=3)


def test_an_existing_data_set_is_not_overwritten(real_data, tmp_path):
    case = _cases(real_data / "hc18", "train", "mask")[0]
    write_raw_dataset([case], [], tmp_path, spatial_dims=2)
    with pytest.raises(OutputError, match="not empty"):
        write_raw_dataset([case], [], tmp_path, spatial_dims=2)

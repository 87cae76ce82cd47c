"""Finding a clean data set's items the way ``ulmed protect`` does: images + masks, NIfTI + labels, a labels CSV."""

from __future__ import annotations

import csv
import logging
import shutil

import pytest

from ulmed.errors import InputError
from ulmed.eval.folders import class_indices, find_eval_items, read_class_labels


def test_images_and_masks_without_an_index(plain_folders):
    folder = find_eval_items(plain_folders["seg2d"])
    assert folder.task == "segmentation" and folder.spatial_dims == 2 and folder.kind == "2d-segmentation"
    assert len(folder.items) == 10 and folder.fixed is None and folder.classes is None
    keys = [item.key for item in folder.items]
    assert keys == sorted(keys) and all(k.startswith("images/") for k in keys)
    assert all(item.target == plain_folders["seg2d"] / "masks" / item.image.name for item in folder.items)


def test_nifti_and_labels_without_an_index(plain_folders):
    folder = find_eval_items(plain_folders["seg3d"])
    assert folder.kind == "3d-segmentation" and len(folder.items) == 9
    assert all(item.target.parent.name == "labels" and item.key.endswith(".nii.gz") for item in folder.items)


def test_a_masks_folder_elsewhere(plain_folders, tmp_path):
    images = tmp_path / "scans"
    shutil.copytree(plain_folders["seg2d"] / "images", images)
    with pytest.raises(InputError, match="--masks"):
        find_eval_items(images)
    folder = find_eval_items(images, masks=plain_folders["seg2d"] / "masks")
    assert len(folder.items) == 10 and folder.items[0].key == folder.items[0].image.name


def test_a_labels_csv_with_class_names(plain_folders):
    folder = find_eval_items(plain_folders["cls"], labels=plain_folders["cls"] / "labels.csv")
    assert folder.kind == "2d-classification" and folder.classes == ["normal", "pneumonia"]
    assert len(folder.items) == 24 and {item.label for item in folder.items} == {0, 1}
    assert all(item.target is None for item in folder.items)
    relative = find_eval_items(plain_folders["cls"], labels="labels.csv")  # found inside the data set too
    assert [i.label for i in relative.items] == [i.label for i in folder.items]


def test_class_indices_from_numbers_and_names():
    index, classes = class_indices({"a": "10", "b": "2", "c": "10"})
    assert classes == ["2", "10"] and index == {"a": 1, "b": 0, "c": 1}  # numbers by value, not as text
    index, classes = class_indices({"a": "tumour", "b": "healthy"})
    assert classes == ["healthy", "tumour"] and index == {"a": 1, "b": 0}


def test_labels_file_problems(tmp_path):
    bad = tmp_path / "l.csv"
    bad.write_text("name,value\na.png,1\n")
    with pytest.raises(InputError, match="path column"):
        read_class_labels(bad)
    bad.write_text("image,label\na.png,\n")
    with pytest.raises(InputError, match="line 2: empty label"):
        read_class_labels(bad)
    bad.write_text("image,label\n./sub\\a.png,x\n")
    assert read_class_labels(bad) == {"sub/a.png": "x"}
    with pytest.raises(InputError, match="not found"):
        find_eval_items(tmp_path, labels=tmp_path / "nope.csv")


def test_unlabelled_and_unmasked_items_are_skipped_with_a_warning(plain_folders, tmp_path, caplog):
    root = tmp_path / "cls"
    shutil.copytree(plain_folders["cls"], root)
    shutil.copy(root / "pt00_v0.png", root / "extra.png")
    with open(root / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["gone.png", "normal"])
    with caplog.at_level(logging.WARNING, logger="ulmed"):
        folder = find_eval_items(root, labels=root / "labels.csv")
    assert len(folder.items) == 24
    assert dict(folder.skipped) == {"gone.png": "listed in the labels file but not found in the data set",
                                    "extra.png": "no label in labels.csv"}
    assert "skipped extra.png" in caplog.text and "skipped gone.png" in caplog.text
    seg = tmp_path / "seg"
    shutil.copytree(plain_folders["seg2d"], seg)
    (seg / "masks" / "005_HC.png").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ulmed"):
        folder = find_eval_items(seg)
    assert len(folder.items) == 9 and folder.skipped == [("images/005_HC.png", "no mask or label map found")]
    assert "skipped images/005_HC.png: no mask" in caplog.text


def test_an_index_with_a_split_column_fixes_the_split(real_data):
    folder = find_eval_items(real_data / "hc18")
    with open(real_data / "hc18" / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [item.key for item in folder.items] == [r["image"] for r in rows]  # index order
    assert folder.fixed == {r["image"]: r["split"] for r in rows}
    assert all(item.target == real_data / "hc18" / r["mask"] for item, r in zip(folder.items, rows))
    volumes = find_eval_items(real_data / "msd_hippocampus")  # its label column names files
    assert volumes.kind == "3d-segmentation" and volumes.items[0].target.name == "hippocampus_003.nii.gz"


def test_an_index_of_class_labels(plain_folders, tmp_path):
    root = tmp_path / "cls"
    shutil.copytree(plain_folders["cls"], root)
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(root / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "split"])
        writer.writeheader()
        writer.writerows({**r, "split": "test" if i % 4 == 0 else "train"} for i, r in enumerate(rows))
    folder = find_eval_items(root)
    assert folder.task == "classification" and folder.classes == ["normal", "pneumonia"]
    assert list(folder.fixed.values()).count("test") == 6


def test_nothing_to_evaluate(tmp_path, plain_folders):
    with pytest.raises(InputError, match="clean data set folder not found"):
        find_eval_items(tmp_path / "nope")
    mixed = tmp_path / "mixed"
    shutil.copytree(plain_folders["seg2d"], mixed)
    shutil.copytree(plain_folders["seg3d"] / "images", mixed / "images" / "vols")
    shutil.copytree(plain_folders["seg3d"] / "labels", mixed / "masks" / "vols")
    with pytest.raises(InputError, match="both 2D images and NIfTI volumes"):
        find_eval_items(mixed)

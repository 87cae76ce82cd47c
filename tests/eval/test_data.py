"""``ulmed evaluate`` on any data set ``ulmed protect`` takes: find, split, load; reload; protected copies."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from ulmed.errors import ConfigError, InputError
from ulmed.eval.data import load_eval_data, load_protected, load_split, protected_file, reload_eval_data
from ulmed.eval.grid import run_evaluation
from ulmed.eval.loading import Preprocess
from ulmed.eval.split import SPLIT_FILE, SplitRule
from ulmed.eval.train import TrainConfig

TINY = TrainConfig(epochs=1, batch_size=4, device="cpu", num_threads=1)


def test_a_plain_images_and_masks_folder(plain_folders, tmp_path):
    data = load_eval_data(plain_folders["seg2d"], out=tmp_path, preprocess=Preprocess(size=(16, 24)))
    assert data.task == "segmentation" and data.spatial_dims == 2 and data.num_classes == 2 and data.channels == 1
    assert data.train_images.shape == (8, 1, 16, 24) and data.test_images.shape == (2, 1, 16, 24)
    assert data.train_targets.dtype == np.int64 and set(np.unique(data.train_targets)) == {0, 1}
    assert not set(data.train_keys) & set(data.test_keys)
    assert data.split["source"] == "subject-hash" and data.split["items"] == {"train": 8, "test": 2}
    saved = json.loads((tmp_path / SPLIT_FILE).read_text())
    assert saved["train"] == data.train_keys and saved["test"] == data.test_keys
    root = plain_folders["seg2d"]
    assert data.train_image_paths == [root / k for k in data.train_keys]
    assert data.test_target_paths == [root / "masks" / p.name for p in data.test_image_paths]
    assert data.dataset == "2d-segmentation" and data.loader_kwargs["kernel"] == "pil"
    assert data.record()["kind"] == "2d-segmentation" and data.record()["skipped"] == []


def test_the_fixed_split_of_an_index_and_one_split(real_data):
    data = load_eval_data(real_data / "hc18", preprocess=Preprocess(size=(16, 16)), train_limit=3, test_limit=2)
    with open(real_data / "hc18" / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert data.train_keys == [r["image"] for r in rows if r["split"] == "train"][:3]
    assert data.test_keys == [r["image"] for r in rows if r["split"] == "test"][:2]
    assert data.split["source"] == "index.csv" and data.split["unused"] == sum(r["split"] == "val" for r in rows)
    images, masks, keys = load_split(real_data / "hc18", "val", preprocess=Preprocess(size=(48, 64)), limit=5)
    assert images.shape == (5, 1, 48, 64) and masks.shape == (5, 48, 64) and len(keys) == 5
    # letterbox: a 400x270 image scaled by 0.16 is 43x64, padded with 2 zero rows on top
    assert images[:, :, :2].max() == 0 and images[:, :, 2:-3].max() > 0
    with pytest.raises(InputError, match="split"):
        load_split(real_data / "hc18", "training")


def test_volumes_and_a_subject_rule(plain_folders, tmp_path):
    rule = SplitRule(r"hippocampus_0(\d)", 0.3)
    data = load_eval_data(plain_folders["seg3d"], rule=rule, out=tmp_path, preprocess=Preprocess(shape=(8, 8, 8)))
    assert data.dataset == "3d-segmentation" and data.num_classes == 3 and data.train_images.shape[1:] == (1, 8, 8, 8)
    tens = {k[len("images/hippocampus_0")] for k in data.test_keys}
    assert not tens & {k[len("images/hippocampus_0")] for k in data.train_keys}  # one subject, one side
    assert data.split["subjects"] == {"train": 3, "test": 1}


def test_a_labels_csv_of_class_names(plain_folders):
    data = load_eval_data(plain_folders["cls"], labels=plain_folders["cls"] / "labels.csv",
                          rule=SplitRule(r"^(pt\d+)_"), preprocess=Preprocess(size=(32, 32)))
    assert data.task == "classification" and data.classes == ["normal", "pneumonia"] and data.num_classes == 2
    assert data.train_images.shape[1:] == (1, 32, 32) and data.train_targets.shape == (len(data.train_keys),)
    assert data.split["subjects"]["train"] + data.split["subjects"]["test"] == 12
    assert {k[:4] for k in data.test_keys}.isdisjoint(k[:4] for k in data.train_keys)  # a patient's two views
    assert len(data.test_keys) == 2 * data.split["subjects"]["test"]


def test_a_bad_file_is_skipped_and_named(plain_folders, tmp_path, caplog):
    root = tmp_path / "seg"
    shutil.copytree(plain_folders["seg2d"], root)
    (root / "images" / "005_HC.png").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="ulmed"):
        data = load_eval_data(root)
    assert "images/005_HC.png" not in data.train_keys + data.test_keys
    assert "skipped images/005_HC.png: cannot read image" in caplog.text
    assert data.skipped[0][0] == "images/005_HC.png" and len(data.train_keys) + len(data.test_keys) == 9
    for f in (root / "images").iterdir():
        f.write_bytes(b"truncated")
    with pytest.raises(InputError, match="has no readable item"):
        load_eval_data(root)


def test_reload_at_another_grid_and_protected_copies(plain_folders, tmp_path):
    data = load_eval_data(plain_folders["seg2d"], preprocess=Preprocess(size=(16, 16)))
    bigger = reload_eval_data(data, size=(32, 32), kernel="torch")
    assert bigger.train_keys == data.train_keys and bigger.train_images.shape[2:] == (32, 32)
    assert bigger.preprocess.kernel == "torch" and data.preprocess.kernel == "pil" and bigger.split == data.split
    with pytest.raises(ConfigError, match="resize kernel"):
        reload_eval_data(data, kernel="nearest")
    copy = tmp_path / "copy"
    shutil.copytree(plain_folders["seg2d"], copy)
    np.testing.assert_array_equal(load_protected(data, copy), data.train_images)
    assert load_protected(bigger, copy).shape == bigger.train_images.shape
    (copy / data.train_keys[0]).unlink()
    with pytest.raises(InputError, match="protected copy of this item not found"):
        load_protected(data, copy)
    (copy / "x.png").write_bytes(b"")
    assert protected_file(copy, "x.jpg") == copy / "x.png"  # ulmed writes JPEG inputs as PNG


def _run(clean, out, **kw):
    options = {"train_config": TINY, "train_limit": 6, "test_limit": 2, "figures": False, **kw}
    return run_evaluation(clean, {}, out, **options)


def test_evaluate_a_plain_folder_records_and_reuses_its_split(plain_folders, tmp_path):
    out = tmp_path / "out"
    report = _run(plain_folders["seg2d"], out, size=(16, 16), subject=r"(\d+)_HC")
    split = report["settings"]["split"]
    assert split["source"] == "subject-hash" and split["rule"]["subject"] == r"(\d+)_HC"
    assert split["items"] == {"train": 8, "test": 2} and report["settings"]["data"]["kind"] == "2d-segmentation"
    assert json.loads((out / "report.json").read_text())["settings"]["split"] == split
    assert (out / SPLIT_FILE).is_file() and report["trained"] == 1
    again = _run(plain_folders["seg2d"], out, size=(16, 16), subject=r"(\d+)_HC")
    assert again["reused"] == 1 and again["settings"]["split"] == split


def test_evaluate_volumes_and_classes(plain_folders, tmp_path):
    vols = _run(plain_folders["seg3d"], tmp_path / "v", shape=(16, 16, 16))
    assert vols["settings"]["loader"] == {"shape": (16, 16, 16), "spacing": None}
    assert {"dice_1", "dice_2"} <= set(vols["cells"][0]["metrics"])
    cls = _run(plain_folders["cls"], tmp_path / "c", labels=plain_folders["cls"] / "labels.csv", size=(28, 28),
               victims=["resnet18"], test_limit=None)
    assert cls["main_metric"] == "accuracy" and cls["settings"]["data"]["classes"] == ["normal", "pneumonia"]
    assert 0.0 <= cls["cells"][0]["value"] <= 1.0


def test_colour_images_keep_three_channels(plain_folders, tmp_path):
    root = tmp_path / "rgb"
    shutil.copytree(plain_folders["seg2d"], root)
    for path in (root / "images").iterdir():
        with Image.open(path) as im:
            grey = np.asarray(im)
        Image.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1)).save(path)
    data = load_eval_data(root, preprocess=Preprocess(size=(16, 16)))
    assert data.channels == 3 and data.train_images.shape[1:] == (3, 16, 16) and data.record()["channels"] == 3
    assert not np.allclose(data.train_images[:, 0], data.train_images[:, 2])
    (root / "images" / "005_HC.png").unlink()
    shutil.copy(plain_folders["seg2d"] / "images" / "005_HC.png", root / "images")  # one grey image: all grey
    assert load_eval_data(root, preprocess=Preprocess(size=(16, 16))).channels == 1

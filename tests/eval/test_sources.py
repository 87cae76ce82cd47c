"""What an evaluation reads: data set kinds, the clean splits, protected copies and their pairs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ulmed.errors import ConfigError, InputError
from ulmed.eval.sources import (
    DATASETS,
    check_name,
    detect_dataset,
    imperceptibility_summary,
    load_eval_data,
    native_pairs,
    read_protection,
)


def test_detect_dataset_from_the_files(real_data, tmp_path):
    assert detect_dataset(real_data / "hc18") == "hc18"
    assert detect_dataset(real_data / "msd_hippocampus") == "hippocampus"
    assert detect_dataset(real_data / "pneumoniamnist") == "pneumonia"
    with pytest.raises(InputError, match="index.csv"):
        detect_dataset(tmp_path)
    with pytest.raises(InputError, match="not found"):
        detect_dataset(tmp_path / "nope")
    assert DATASETS == ("auto", "hc18", "hippocampus", "pneumonia")


def test_load_eval_data_keeps_the_fixed_splits(real_data):
    data = load_eval_data(real_data / "hc18", "HC18", size=(16, 16), train_limit=3, test_limit=2)
    assert data.dataset == "hc18" and data.task == "segmentation" and data.num_classes == 2
    assert data.train_images.shape == (3, 1, 16, 16) and data.test_images.shape == (2, 1, 16, 16)
    assert data.train_targets.shape == (3, 16, 16) and len(data.train_keys) == 3
    assert data.loader_kwargs == {"size": (16, 16), "keep_aspect": True}
    cls = load_eval_data(real_data / "pneumoniamnist", train_limit=4, test_limit=4)
    assert cls.task == "classification" and cls.train_targets.shape == (4,)
    with pytest.raises(ConfigError, match="hippocampus"):  # the message lists the kinds
        load_eval_data(real_data / "hc18", "ct")


def test_protection_names():
    assert check_name("salm_r10.v2+jpeg") == "salm_r10.v2+jpeg"
    for bad in ("", "-x", "a b", "a/b"):
        with pytest.raises(ConfigError, match="must start"):
            check_name(bad)
    with pytest.raises(ConfigError, match="reserved"):
        check_name("clean", reserved=("clean",))


def test_read_protection_from_its_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"params": {"method": "em", "surrogate": "auto",
                                                                   "budget": "8/255", "input": "x"}}))
    prot = read_protection("em", tmp_path, "classification")
    assert (prot.method, prot.surrogate, prot.budget) == ("em", "resnet18", "8/255")
    assert "input" not in prot.params and prot.to_dict()["path"] == str(tmp_path)
    (tmp_path / "manifest.json").write_text("[")
    with pytest.raises(InputError, match="manifest"):
        read_protection("em", tmp_path, "classification")
    with pytest.raises(InputError, match="not found"):
        read_protection("em", tmp_path / "nope", "segmentation")


def test_native_pairs_and_imperceptibility_of_a_copy(real_data, tmp_path):
    data = load_eval_data(real_data / "hc18", size=(16, 16), train_limit=2, test_limit=1)
    copy = tmp_path / "copy"
    shutil.copytree(real_data / "hc18", copy)
    pairs = list(native_pairs(data, copy))
    assert [k for k, *_ in pairs] == data.train_keys and all(np.array_equal(c, p) for _, c, p, _ in pairs)
    assert pairs[0][1].ndim == 3 and pairs[0][3] == 255.0  # (C, H, W) at native resolution, 8-bit scale
    summary = imperceptibility_summary(data, copy)
    assert summary["n"] == 2 and summary["unchanged"] == 2 and summary["psnr"] is None and summary["linf"] == 0.0
    (copy / data.train_keys[0]).unlink()
    with pytest.raises(InputError, match="protected copy"):
        list(native_pairs(data, copy))

"""What an evaluation reads besides the clean data: protected copies, their manifests, and (clean, protected) pairs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ulmed.errors import ConfigError, InputError
from ulmed.eval.data import load_eval_data
from ulmed.eval.loading import Preprocess
from ulmed.eval.sources import (
    EvalData,
    check_name,
    imperceptibility_summary,
    native_pairs,
    read_protection,
)


def test_eval_data_is_still_named_here(real_data):
    data = load_eval_data(real_data / "hc18", preprocess=Preprocess(size=(16, 16)), train_limit=1, test_limit=1)
    assert isinstance(data, EvalData)


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
    data = load_eval_data(real_data / "hc18", preprocess=Preprocess(size=(16, 16)), train_limit=2, test_limit=1)
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


def test_native_pairs_of_volumes_share_the_clean_scale(real_data, tmp_path):
    data = load_eval_data(real_data / "msd_hippocampus", preprocess=Preprocess(shape=(8, 8, 8)), train_limit=1,
                          test_limit=1)
    copy = tmp_path / "copy"
    shutil.copytree(real_data / "msd_hippocampus", copy)
    ((key, clean, prot, scale),) = native_pairs(data, copy)
    assert key == data.train_keys[0] and clean.ndim == 4 and clean.min() == 0.0 and clean.max() == 1.0
    assert np.array_equal(clean, prot) and scale > 1.0  # native units of the MRI volume per [0, 1]

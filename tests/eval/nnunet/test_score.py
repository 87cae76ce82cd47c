"""Dice of prediction files against label files, through ulmed.eval.metrics (MONAI)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ulmed.errors import ConfigError, InputError
from ulmed.eval.nnunet.score import read_label_file, score_predictions


def _nii(path, data):
    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.eye(4)), path)
    return path


def test_perfect_and_half_predictions_in_3d(tmp_path):
    target = np.zeros((8, 8, 8), np.uint8)
    target[:4, :4, :4], target[4:, 4:, 4:] = 1, 2
    half = target.copy()
    half[:2] = 0  # class 1 keeps half of its voxels: Dice 2*32/(64+32) = 2/3
    t = _nii(tmp_path / "t.nii.gz", target)
    perfect = score_predictions([_nii(tmp_path / "p.nii.gz", target)], [t], 3)
    assert perfect["dice"] == pytest.approx(1.0) and perfect["dice_per_class"] == {"1": 1.0, "2": 1.0}
    partial = score_predictions([_nii(tmp_path / "h.nii.gz", half)], [t], 3)
    assert partial["dice_per_class"]["1"] == pytest.approx(2 / 3, abs=1e-6)
    assert partial["dice_per_class"]["2"] == pytest.approx(1.0)
    assert partial["dice"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-6) and partial["n"] == 1


def test_cases_of_different_shapes_and_an_absent_class_in_2d(tmp_path):
    a, b = np.zeros((6, 9), np.uint8), np.zeros((5, 4), np.uint8)
    a[:3] = 1
    b[:2] = 1
    for name, arr in (("a", a), ("b", b)):
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
    miss = np.zeros_like(b)
    Image.fromarray(miss).save(tmp_path / "miss.png")
    out = score_predictions([tmp_path / "a.png", tmp_path / "miss.png"], [tmp_path / "a.png", tmp_path / "b.png"], 3)
    assert out["dice_per_class"]["1"] == pytest.approx(0.5)  # 1.0 on a, 0.0 on b
    assert out["dice_per_class"]["2"] is None and out["dice"] == pytest.approx(0.5)


def test_errors(tmp_path):
    t = _nii(tmp_path / "t.nii.gz", np.zeros((4, 4, 4)))
    p = _nii(tmp_path / "p.nii.gz", np.zeros((4, 4, 5)))
    with pytest.raises(InputError, match="does not match"):
        score_predictions([p], [t], 2)
    with pytest.raises(InputError, match="no prediction"):
        read_label_file(tmp_path / "none.nii.gz")
    with pytest.raises(ConfigError, match="one each"):
        score_predictions([], [], 2)

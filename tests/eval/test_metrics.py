import math

import numpy as np
import pytest
import torch
from PIL import Image

from ulmed.errors import ConfigError
from ulmed.eval.metrics import (
    SegmentationMetrics,
    classification_metrics,
    segmentation_metrics,
)


@pytest.fixture(scope="module")
def real_mask(real_data):
    """A real HC18 head mask, downsampled 4x (nearest) to keep HD95 fast: (H, W) in {0, 1}."""
    with Image.open(real_data / "hc18" / "masks" / "012_HC.png") as im:
        mask = (np.asarray(im.convert("L")) > 0).astype(np.int64)
    return mask[::4, ::4]


def test_prediction_equal_to_target_scores_one(real_mask):
    m = segmentation_metrics(real_mask[None], real_mask[None], num_classes=2)
    assert m["dice"] == pytest.approx(1.0)
    assert m["iou"] == pytest.approx(1.0)
    assert m["hd95"] == pytest.approx(0.0)


def test_disjoint_prediction_scores_zero():
    target = np.zeros((1, 16, 16), dtype=np.int64)
    target[0, :8] = 1
    m = segmentation_metrics(1 - target, target, num_classes=2)
    assert m["dice"] == 0.0
    assert m["iou"] == 0.0


def test_values_agree_with_a_hand_computation_on_a_real_mask(real_mask):
    pred = np.roll(real_mask, shift=(3, -5), axis=(0, 1))
    a, b = real_mask.astype(bool), pred.astype(bool)
    inter, total, union = np.sum(a & b), np.sum(a) + np.sum(b), np.sum(a | b)
    m = segmentation_metrics(pred[None], real_mask[None], num_classes=2)
    assert m["dice"] == pytest.approx(2 * inter / total, rel=1e-5)
    assert m["iou"] == pytest.approx(inter / union, rel=1e-5)
    assert 0 < m["hd95"] <= math.hypot(3, 5) + 1e-4


def test_logits_and_labels_give_the_same_result(real_mask):
    pred = np.roll(real_mask, shift=4, axis=1)
    logits = torch.from_numpy(np.stack([1 - pred, pred]).astype(np.float32))[None] * 5
    assert segmentation_metrics(logits, real_mask[None], 2) == segmentation_metrics(pred[None], real_mask[None], 2)


def test_empty_classes_are_ignored_in_the_means():
    target = np.zeros((2, 8, 8), dtype=np.int64)
    target[0, 2:6, 2:6] = 1
    pred = target.copy()
    pred[1, 0, 0] = 1  # false positive on a sample without class 1: not counted
    metric = SegmentationMetrics(num_classes=3)
    metric(pred, target)
    m = metric.aggregate()
    assert m["dice_1"] == pytest.approx(1.0)
    assert math.isnan(m["dice_2"])  # class 2 never present
    assert m["dice"] == pytest.approx(1.0)
    assert m["n"] == 2
    metric.reset()
    metric(np.zeros_like(target), target)  # nothing predicted: Dice 0, HD95 undefined
    m = metric.aggregate()
    assert m["dice"] == 0.0 and math.isnan(m["hd95"]) and m["hd95_undefined"] == 1.0


def test_bad_segmentation_inputs_are_refused():
    with pytest.raises(ConfigError, match="shape"):
        segmentation_metrics(np.zeros((1, 8, 8), int), np.zeros((1, 8, 9), int), 2)
    with pytest.raises(ConfigError, match="labels"):
        segmentation_metrics(np.full((1, 8, 8), 3), np.zeros((1, 8, 8), int), 2)
    with pytest.raises(ConfigError, match="channels"):
        segmentation_metrics(np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 8, 8), int), 2)


def test_classification_accuracy_and_auc():
    p1 = np.array([0.1, 0.4, 0.35, 0.8])  # classic example: AUC 0.75
    labels = np.array([0, 0, 1, 1])
    logits = torch.tensor(np.stack([np.zeros(4), np.log(p1 / (1 - p1))], axis=1), dtype=torch.float32)
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(0.75)  # 0.35 < 0.5 is the one mistake
    assert m["auc"] == pytest.approx(0.75)
    perfect = classification_metrics(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 1]))
    assert perfect["accuracy"] == 1.0 and perfect["auc"] == 1.0

"""Surrogate targets: masks to class indices, label-free pseudo-targets, class labels."""

import numpy as np
import pytest
from PIL import Image

from ulmed.core.targets import prepare_targets, pseudo_label_map
from ulmed.errors import ConfigError


def test_masks_map_to_class_indices_in_sorted_order(real_data):
    m = np.asarray(Image.open(real_data / "hc18/masks/012_HC.png"))
    img = np.zeros((1, *m.shape), dtype=np.float32)
    ts = prepare_targets([m, m], [img, img])
    assert ts.task == "segmentation" and ts.num_classes == 2 and ts.values == (0, 255)
    assert set(np.unique(ts.targets[0])) == {0, 1}
    assert np.array_equal(ts.targets[0] == 1, m == 255)


def test_missing_targets_get_pseudo_labels(real_data):
    img = np.asarray(Image.open(real_data / "hc18/images/012_HC.png"), dtype=np.float32)[None] / 255
    ts = prepare_targets([None], [img], pseudo_classes=3)
    assert ts.pseudo == (True,) and ts.num_classes == 3
    labels = ts.targets[0]
    assert set(np.unique(labels)) == {0, 1, 2}
    # bands are ordered by intensity: mean intensity rises with the band index
    means = [img[0][labels == k].mean() for k in range(3)]
    assert means[0] < means[1] < means[2]
    assert np.array_equal(pseudo_label_map(np.zeros((1, 4, 4))), np.zeros((4, 4)))


def test_classification_labels_and_mixing_refused():
    img = np.zeros((1, 4, 4), dtype=np.float32)
    ts = prepare_targets([3, 7, 3], [img] * 3)
    assert ts.task == "classification" and list(ts.targets) == [0, 1, 0]
    with pytest.raises(ConfigError, match="mixes"):
        prepare_targets([3, np.zeros((4, 4), dtype=int)], [img, img])


def test_label_maps_keep_their_order_and_mix_with_pseudo_targets():
    img = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4)
    label = np.array([[0, 2, 2, 5]] * 4)
    ts = prepare_targets([label, None], [img, img], pseudo_classes=2)
    assert ts.task == "segmentation" and ts.values == (0, 2, 5) and ts.num_classes == 3
    assert np.array_equal(ts.targets[0][0], [0, 1, 1, 2]) and ts.pseudo == (False, True)

import numpy as np
import pytest
from PIL import Image

from ulmed.core.canvas import crop, pad_stack, tile, untile
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


def test_pad_stack_and_crop_round_trip():
    a, b = np.ones((1, 5, 7)), np.full((1, 6, 3), 2.0)
    stack, valid = pad_stack([a, b], multiple=4)
    assert stack.shape == (2, 1, 8, 8) and valid.shape == (2, 1, 8, 8)
    assert valid[0].sum() == 35 and valid[1].sum() == 18
    assert np.array_equal(crop(stack[1], (6, 3)), b)


@pytest.mark.parametrize("shape,size", [((1, 33, 41, 25), (16, 16, 16)), ((2, 50, 30), (16, 16)), ((1, 8, 8), (16, 16))])
def test_tile_untile_exact(shape, size):
    arr = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    tiles, layout = tile(arr, size)
    assert tiles.shape[0] == layout.count and tiles.shape[1] == shape[0]
    assert np.array_equal(untile(tiles, layout), arr)

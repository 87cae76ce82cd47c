import numpy as np
import pytest

from ulmed.errors import ConfigError, InputError
from ulmed.eval.data import (
    load_hc18,
    load_hippocampus,
    load_pneumonia,
    load_protected_like,
)


def test_hc18_split_shapes_and_values(real_data):
    images, masks, keys = load_hc18(real_data / "hc18", "val", size=(48, 64), limit=5)
    assert len(keys) == 5
    assert images.shape == (5, 1, 48, 64) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert masks.shape == (5, 48, 64) and masks.dtype == np.int64 and set(np.unique(masks)) == {0, 1}
    assert len(keys) == 5 and all(k.startswith("images/") for k in keys)
    # letterbox: a 400x270 image scaled by 0.16 is 43x64, padded with 2 zero rows on top
    assert images[:, :, :2].max() == 0 and images[:, :, 2:-3].max() > 0


def test_hippocampus_and_pneumonia(real_data):
    images, labels, _ = load_hippocampus(real_data / "msd_hippocampus", "test", limit=2)
    assert images.shape == (2, 1, 40, 56, 40) and labels.shape == (2, 40, 56, 40)
    assert images.min() == 0 and images.max() == 1 and set(np.unique(labels)) == {0, 1, 2}
    x, y, k = load_pneumonia(real_data / "pneumoniamnist", "val", limit=7)
    assert x.shape == (7, 1, 28, 28) and y.shape == (7,) and set(np.unique(y)) == {0, 1} and len(k) == 7
    assert k[0] == "val_images/0" and k[-1] == "val_images/269"  # spread over the class-ordered split
    np.testing.assert_array_equal(load_protected_like(real_data / "pneumoniamnist", k), x)


def test_protected_copy_reads_with_the_same_preprocessing(real_data, tmp_path):
    images, _, keys = load_hc18(real_data / "hc18", "train", size=(32, 32), limit=3)
    same = load_protected_like(real_data / "hc18", keys, {"size": (32, 32)})
    np.testing.assert_array_equal(same, images)
    vols, _, vkeys = load_hippocampus(real_data / "msd_hippocampus", "train", limit=2)
    same_vols = load_protected_like(real_data / "msd_hippocampus", vkeys, {"shape": (40, 56, 40)})
    np.testing.assert_array_equal(same_vols, vols)
    with pytest.raises(InputError, match="not found"):
        load_protected_like(tmp_path, keys, {"size": (32, 32)})
    with pytest.raises(ConfigError, match="loader_kwargs"):
        load_protected_like(real_data / "hc18", keys, {"shape": (4, 4, 4)})


def test_bad_arguments(real_data):
    with pytest.raises(ConfigError, match="split"):
        load_hc18(real_data / "hc18", "training")
    with pytest.raises(InputError, match="index.csv"):
        load_hc18(real_data, "train")

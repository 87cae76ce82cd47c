"""Training batches (ulmed/eval/patches.py): augmentation, random patches, stacking."""

import numpy as np
import pytest
import torch

from ulmed.core.tasks import Task
from ulmed.errors import ConfigError
from ulmed.eval.patches import patch_crop, training_batch
from ulmed.eval.train_config import TrainConfig


def _data():
    images = np.arange(2 * 1 * 6 * 6, dtype=np.float32).reshape(2, 1, 6, 6) / 72
    masks = np.zeros((2, 6, 6), dtype=np.int64)
    masks[:, 2:4, 2:4] = 1
    return images, masks


def test_whole_samples_are_stacked_in_order_with_a_channel_axis_on_masks():
    images, masks = _data()
    x, y = training_batch(images, masks, np.array([1, 0]), Task.SEGMENTATION, None, None, np.random.default_rng(0))
    assert torch.equal(x, torch.from_numpy(images[[1, 0]]))
    assert y.shape == (2, 1, 6, 6) and y.dtype == torch.int64 and torch.equal(y[0, 0], torch.from_numpy(masks[1]))
    x, y = training_batch(images, np.array([3, 5]), np.array([1]), Task.CLASSIFICATION, None, None,
                          np.random.default_rng(0))
    assert x.shape == (1, 1, 6, 6) and y.tolist() == [5]


def test_patches_cut_image_and_mask_together_and_follow_the_seed():
    images, masks = _data()
    config = TrainConfig(patch_size=(3, 3), pos_neg=(1.0, 0.0))  # centres on foreground only

    def batch(seed):
        rng = np.random.default_rng(seed)
        return training_batch(images, masks, np.array([0, 1]), Task.SEGMENTATION, None,
                              patch_crop(config, (6, 6), rng), rng)

    x, y = batch(0)
    assert x.shape == (2, 1, 3, 3) and y.shape == (2, 1, 3, 3)
    assert (y.flatten(1).sum(1) > 0).all()  # a foreground centre keeps some foreground
    for i in range(2):  # the patch of the mask is the patch of the image at the same place
        flat = images[i, 0].ravel()
        start = int(np.flatnonzero(np.isclose(flat, float(x[i, 0, 0, 0])))[0])
        r, c = divmod(start, 6)
        assert np.array_equal(y[i, 0].numpy(), masks[i, r : r + 3, c : c + 3])
    x2, _ = batch(0)
    assert torch.equal(x, x2)


def test_an_augment_must_keep_the_shape_and_a_patch_must_fit():
    images, masks = _data()
    shrink = lambda x, y, rng: (x[:, :4], y)  # noqa: E731
    with pytest.raises(ConfigError, match="augment changed"):
        training_batch(images, masks, np.array([0]), Task.SEGMENTATION, shrink, None, np.random.default_rng(0))
    flip = lambda x, y, rng: (x[:, ::-1], y[::-1].copy())  # noqa: E731
    x, y = training_batch(images, masks, np.array([0]), Task.SEGMENTATION, flip, None, np.random.default_rng(0))
    assert torch.equal(x[0], torch.from_numpy(images[0, :, ::-1].copy()))
    with pytest.raises(ConfigError, match="patch_size"):
        patch_crop(TrainConfig(patch_size=(8, 8)), (6, 6), np.random.default_rng(0))
